"""How long each step of a pipeline typically takes, learned from its latest completed jobs.

    stats = compute_stats("video", jobs)        # jobs: CompletedJob(steps, started_at, finished_at, history)
    store.save_step_stats(stats)                # the pipeline's small hash in Redis
    stats = store.step_stats("video")           # read back (cached a few seconds by the store)
    refresh(conn, store, {"video"})             # the mirror, after a batch landed in PostgreSQL

Per pipeline: each step's p50 and p90 duration (``durations.step_durations``, the one
definition) and how many jobs timed it, where on the bar the step typically starts (the
percent of the first history entry that names it), and the p50 and p90 of the whole job
(``durations.job_duration``), over the last ``PROGRESS_ETA_HISTORY_JOBS`` (default 50)
completed jobs of the pipeline that PostgreSQL keeps. The mirror recomputes them for the
pipelines of every batch it lands (``Mirror``), and the store keeps them in Redis under
``<prefix>:stepstats:{<pipeline>}``, so a snapshot read (``progress_service.eta``) never
asks PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .durations import job_duration, percentile, step_durations

if TYPE_CHECKING:
    import psycopg

    from .store import ProgressStore

__all__ = ["CompletedJob", "StepStats", "StepTimes", "compute_stats", "from_hash",
           "refresh", "to_hash"]

# The completed jobs of one pipeline, newest first (the mirror's index: 0005_progress_jobs_step_stats).
LATEST_COMPLETED = (
    "SELECT steps, started_at, finished_at, history FROM progress_jobs"
    " WHERE pipeline = %s AND status = 'completed'"
    " ORDER BY finished_at DESC NULLS LAST LIMIT %s"
)


class CompletedJob(NamedTuple):
    """What the statistics read of one completed job."""

    steps: Sequence[str]
    started_at: str | None  # ISO-8601
    finished_at: str | None
    history: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class StepTimes:
    """One step's durations in seconds over the jobs that timed it, and where the bar starts it."""

    p50: float
    p90: float
    jobs: int
    start_percent: float  # the bar's percent when the step typically begins


@dataclass(frozen=True)
class StepStats:
    """A pipeline's statistics: its steps in order, each one's times, and the whole job's."""

    pipeline: str
    steps: tuple[str, ...]
    jobs: int  # completed jobs they come from
    job_p50: float | None
    job_p90: float | None
    step_times: Mapping[str, StepTimes] = field(default_factory=dict)
    # what its users derive from it once (progress_service.eta's step layouts); not compared
    memo: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def typical(self, step: str) -> float | None:
        """The step's p50 duration in seconds, or None if no job timed it."""
        times = self.step_times.get(step)
        return None if times is None else times.p50

    @property
    def typical_job(self) -> float | None:
        """The whole job's p50 (started to finished), else the sum of its steps' p50."""
        if self.job_p50 is not None:
            return self.job_p50
        typical = [self.typical(s) for s in self.steps]
        return None if not typical or None in typical else sum(t for t in typical if t is not None)


def _pct(values: Sequence[float], q: float) -> float:
    """durations.percentile (q from 0 to 100) of values known not to be empty."""
    return percentile(values, q) or 0.0


def _start_percents(history: Iterable[Mapping[str, Any]], steps: Sequence[str]) -> dict[str, float]:
    """The bar's percent at the first history entry that names each step."""
    out: dict[str, float] = {}
    for entry in history:
        step = entry.get("current_step")
        if isinstance(step, str) and step in steps and step not in out:
            out[step] = float(entry.get("progress_percent") or 0)
    return out


def compute_stats(pipeline: str, jobs: Iterable[CompletedJob]) -> StepStats:
    """The statistics of ``pipeline`` from its completed ``jobs``, newest first (their steps:
    the newest job's)."""
    jobs = list(jobs)
    steps: tuple[str, ...] = tuple(jobs[0].steps) if jobs else ()
    durations: dict[str, list[float]] = {s: [] for s in steps}
    starts: dict[str, list[float]] = {s: [] for s in steps}
    totals: list[float] = []
    for job in jobs:
        for step, seconds in step_durations(job.history, steps).items():
            durations[step].append(seconds)
        for step, percent in _start_percents(job.history, steps).items():
            starts[step].append(percent)
        total = job_duration({"started_at": job.started_at, "finished_at": job.finished_at})
        if total is not None:
            totals.append(total)
    times = {
        step: StepTimes(round(_pct(d, 50), 3), round(_pct(d, 90), 3), len(d),
                        round(_pct(starts[step], 50), 6) if starts[step] else 0.0)
        for step, d in durations.items() if d
    }
    return StepStats(
        pipeline=pipeline, steps=steps, jobs=len(jobs),
        job_p50=round(_pct(totals, 50), 3) if totals else None,
        job_p90=round(_pct(totals, 90), 3) if totals else None,
        step_times=times,
    )


# -- the Redis hash --------------------------------------------------------------------


def to_hash(stats: StepStats) -> dict[str, str]:
    """The pipeline's hash: ``steps`` (JSON), ``jobs``, ``job_p50``, ``job_p90`` ("" when
    unknown) and ``step:<name>`` = JSON ``[p50, p90, jobs, start_percent]`` per timed step."""
    out = {
        "steps": json.dumps(list(stats.steps)),
        "jobs": str(stats.jobs),
        "job_p50": "" if stats.job_p50 is None else repr(stats.job_p50),
        "job_p90": "" if stats.job_p90 is None else repr(stats.job_p90),
    }
    for step, t in stats.step_times.items():
        out[f"step:{step}"] = json.dumps([t.p50, t.p90, t.jobs, t.start_percent])
    return out


def from_hash(pipeline: str, fields: Mapping[str, str]) -> StepStats | None:
    """:func:`to_hash` read back; None for an empty (or unreadable) hash."""
    if not fields.get("steps"):
        return None
    try:
        steps = tuple(json.loads(fields["steps"]))
        times = {}
        for name, raw in fields.items():
            if name.startswith("step:"):
                p50, p90, jobs, start = json.loads(raw)
                times[name[5:]] = StepTimes(float(p50), float(p90), int(jobs), float(start))
        return StepStats(
            pipeline=pipeline, steps=steps, jobs=int(fields.get("jobs") or 0),
            job_p50=float(fields["job_p50"]) if fields.get("job_p50") else None,
            job_p90=float(fields["job_p90"]) if fields.get("job_p90") else None,
            step_times=times,
        )
    except (ValueError, TypeError):
        return None


# -- from PostgreSQL -------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def refresh(conn: psycopg.Connection[Any], store: ProgressStore, pipelines: Iterable[str]) -> list[StepStats]:
    """Recompute the statistics of ``pipelines`` from the latest completed jobs PostgreSQL keeps
    (``conn``, a psycopg connection; ``store.settings.eta_history_jobs`` of them) and save each
    in Redis (``store.save_step_stats``). Returns them."""
    limit = store.settings.eta_history_jobs
    out = []
    for pipeline in sorted(set(pipelines)):
        rows = conn.execute(LATEST_COMPLETED, (pipeline, limit)).fetchall()
        jobs = [CompletedJob(steps or [], _iso(started), _iso(finished), history or [])
                for steps, started, finished, history in rows]
        stats = compute_stats(pipeline, jobs)
        store.save_step_stats(stats)
        out.append(stats)
    return out
