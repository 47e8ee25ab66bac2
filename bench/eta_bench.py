"""How far off the ETA is, the new one (past jobs' step durations and the job's rate) against
today's (the job's rate alone), in the same run, on a synthetic pipeline whose steps take
known, noisy times.

The pipeline has five steps that take 2 %, 2 %, 8 %, 48 % and 40 % of a typical job, each
+-20 % (uniform, independent), and reports ten updates within each step. Its bar gives each
step an equal share (a pipeline that declares no weights; ``--weights matched`` gives the
bar the steps' time shares instead, as the bundled video pipeline does). Times are real but
scaled down: a job takes ``--job-seconds`` (default 1 s), standing for one ``--scale`` times
longer, and the rate's window (30 s) shrinks by the same factor.

1. ``--history`` jobs (20) run through the real store (Redis' clock, the update script),
   are mirrored to PostgreSQL (a schema of the bench's own), and the mirror refreshes the
   pipeline's step statistics in Redis, as in production.
2. ``--jobs`` more (10) run; at 10 %, 50 % and 90 % of each the job is read through a store
   with the statistics (the new ETA) and through one without them (today's rate-only ETA,
   which is the new one's fallback); once the job has finished, each read's error is
   ``|eta - (finished_at - the read's time)|``.

Prints the mean absolute error of each at each mark (seconds, and as a share of a typical
job) and the ratio new / old. Target: the new error at most half the old at 10 % and at 50 %
(exit 1 otherwise).

    python bench/eta_bench.py [--history 20] [--jobs 10] [--job-seconds 1.0] [--weights equal|matched]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

from progress_service import ProgressStore  # noqa: E402
from progress_service.mirror import Mirror  # noqa: E402
from progress_service.models import ms_from_iso  # noqa: E402
from progress_service.store import ETA_WINDOW_MS  # noqa: E402

PIPELINE = "etabench"
STEPS = ("download", "parse", "prepare", "render", "encode")
SHARES = (0.02, 0.02, 0.08, 0.48, 0.40)  # of a typical job's time
NOISE = 0.20
TICKS = 10  # updates within each step
MARKS = (10, 50, 90)
GOAL_MARKS = (10, 50)


class RateOnlyStore(ProgressStore):
    """Today's store: no step statistics, so its ETA is the job's rate alone."""

    def step_stats(self, pipeline):  # type: ignore[no-untyped-def]
        return None


def bar(weights: str) -> list[tuple[float, float]]:
    """Each step's (start, share) on the bar, percent."""
    shares = [100 / len(STEPS)] * len(STEPS) if weights == "equal" else [s * 100 for s in SHARES]
    return [(sum(shares[:i]), share) for i, share in enumerate(shares)]


def run_job(store: ProgressStore, job_id: str, job_seconds: float, layout, rng: random.Random,
            readers: dict[str, ProgressStore] | None = None) -> dict[int, dict[str, tuple]]:
    """Run one job through the store; with ``readers``, read it at each mark: mark -> name ->
    (read time ms, eta_seconds, eta_source)."""
    store.create_job(job_id, job_id, steps=list(STEPS), pipeline=PIPELINE)
    samples: dict[int, dict[str, tuple]] = {}
    marks = list(MARKS)
    for step, share, (start, width) in zip(STEPS, SHARES, layout, strict=True):
        seconds = job_seconds * share * rng.uniform(1 - NOISE, 1 + NOISE)
        store.update(job_id, status="running", current_step=step, progress_percent=round(start, 6))
        for tick in range(1, TICKS + 1):
            time.sleep(seconds / TICKS)
            progress = round(min(start + width * tick / TICKS, 100), 6)
            store.update(job_id, progress_percent=progress)
            while readers and marks and progress >= marks[0]:
                at = store.server_time_ms()
                samples[marks.pop(0)] = {name: (at, *_eta(reader, job_id)) for name, reader in readers.items()}
    return samples


def _eta(store: ProgressStore, job_id: str) -> tuple:
    snap = store.get(job_id)
    assert snap is not None
    return snap["eta_seconds"], snap["eta_source"]


def main() -> int:
    ap = _common.arguments(__doc__)
    ap.add_argument("--history", type=int, default=20, help="jobs run first, to learn from")
    ap.add_argument("--jobs", type=int, default=10, help="jobs whose ETA is measured")
    ap.add_argument("--job-seconds", type=float, default=1.0, help="a typical job's real duration")
    ap.add_argument("--scale", type=float, default=120.0,
                    help="how much longer the job it stands for is (the rate's window shrinks by it)")
    ap.add_argument("--weights", choices=("equal", "matched"), default="equal",
                    help="the bar's share of each step: equal (no weights declared) or the steps' time shares")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    layout = bar(args.weights)
    _, prefix, client, store = _common.redis_store(decode_responses=True)
    window = max(1, int(ETA_WINDOW_MS / args.scale))
    old = RateOnlyStore(client, store.settings)
    for reader in (store, old):
        reader.eta_window_ms = window
    try:
        with _common.postgres_schema() as url, Mirror(store, url) as mirror:
            print(f"{args.history} jobs of ~{args.job_seconds:g} s to learn from (steps {', '.join(STEPS)}: "
                  f"{', '.join(f'{s:.0%}' for s in SHARES)} of the time, +-{NOISE:.0%}; bar: {args.weights} "
                  f"shares; rate window {window} ms) ...")
            for i in range(args.history):
                run_job(store, f"{prefix}-h{i:03d}", args.job_seconds, layout, rng)
            mirror.sweep(limit=None)
            stats = store.step_stats(PIPELINE)
            assert stats is not None and stats.jobs == args.history, stats
            print("learned p50 / p90 (s): " + ", ".join(
                f"{s} {stats.step_times[s].p50:.3f}/{stats.step_times[s].p90:.3f}" for s in STEPS)
                + f"; job {stats.job_p50:.3f}/{stats.job_p90:.3f}")

            errors: dict[str, dict[int, list[float]]] = {n: {m: [] for m in MARKS} for n in ("new", "old")}
            sources: dict[str, int] = {}
            for i in range(args.jobs):
                job_id = f"{prefix}-j{i:03d}"
                samples = run_job(store, job_id, args.job_seconds, layout, rng, {"new": store, "old": old})
                finished = ms_from_iso(store.get(job_id)["finished_at"])
                for mark, reads in samples.items():
                    for name, (at, eta, source) in reads.items():
                        truth = (finished - at) / 1000
                        # no estimate at all is as wrong as "done now"
                        errors[name][mark].append(abs((eta or 0.0) - truth))
                        if name == "new":
                            sources[source] = sources.get(source, 0) + 1
                mirror.sweep(limit=None)  # as a worker's mirror loop does: the history grows
    finally:
        _common.drop_keys(client, f"{prefix}:*")
        client.close()

    typical = args.job_seconds
    print(f"\nETA error after a history of {args.history} jobs, over {args.jobs} jobs "
          f"(mean absolute, seconds; % of a typical job):")
    print(f"{'mark':>6}  {'new: history + rate':>22}  {'old: rate only':>22}  {'new / old':>9}")
    met = True
    for mark in MARKS:
        new, old_e = statistics.fmean(errors["new"][mark]), statistics.fmean(errors["old"][mark])
        ratio = new / old_e if old_e else float("inf")
        if mark in GOAL_MARKS and new > old_e / 2:
            met = False
        print(f"{mark:>5}%  {new:>12.3f} ({new / typical:6.1%})  {old_e:>12.3f} ({old_e / typical:6.1%})"
              f"  {ratio:>9.2f}")
    print("the new ETA's sources: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items(), key=str)))
    return _common.verdict("target: new error <= half the old at 10 % and 50 %", met, "met", "MISSED")


if __name__ == "__main__":
    sys.exit(main())
