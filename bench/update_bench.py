"""How fast ProgressStore.update is, against a floor measured in the same run.

Prints, against the Redis at REDIS_URL (default redis://127.0.0.1:6379/0):
- store.update calls/s, one at a time (each a full round trip);
- updates/s batched (update_many: one pipelined round trip per batch);
- the floor: a bare EVALSHA of a one-line script, one at a time;
and the ratios. Targets: one at a time >= 0.8x the floor (issue 14); batched >= 30,000/s.

    python bench/update_bench.py [--seconds 3] [--batch 500]
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import _common


def rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds``."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def interleaved(a, b, seconds: float, rounds: int = 7) -> tuple[float, float, float]:
    """Median rates of ``a`` and ``b`` and the median of their per-round ratio b/a.

    The two alternate in short rounds, so a busy machine slows both alike.
    """
    rate(a, 0.1), rate(b, 0.1)  # warm up connections and script caches
    ra, rb, ratios = [], [], []
    for _ in range(rounds):
        x, y = rate(a, seconds / rounds), rate(b, seconds / rounds)
        ra.append(x), rb.append(y), ratios.append(y / x)
    return statistics.median(ra), statistics.median(rb), statistics.median(ratios)


def main() -> int:
    ap = _common.arguments(__doc__, seconds=3.0)
    ap.add_argument("--batch", type=int, default=500, help="updates per pipelined batch")
    args = ap.parse_args()

    url, prefix, client, store = _common.redis_store()
    try:
        floor_sha = client.script_load("return 1")
        store.create_job("one", "31452104")
        counter = iter(range(10**9))
        # Every call is a real change (a fraction more progress), so each one
        # takes the full path: validate, HSET, XADD, two PUBLISHes.
        floor, one, ratio = interleaved(
            lambda: client.evalsha(floor_sha, 0),
            lambda: store.update("one", progress_percent=next(counter) * 1e-7),
            2 * args.seconds,
        )

        jobs = [f"batch-{i}" for i in range(50)]
        for j in jobs:
            store.create_job(j, "31452104")
        step = iter(range(10**9))

        def batch():
            base = next(step) * 1e-5
            store.update_many(
                {"job_id": jobs[i % len(jobs)], "progress_percent": base + i * 1e-9}
                for i in range(args.batch)
            )

        batched = rate(batch, args.seconds / 2) * args.batch
    finally:
        _common.drop_keys(client, f"{prefix}*")

    print(f"redis {client.info('server')['redis_version']} at {url}")
    print(f"floor: bare EVALSHA 'return 1'      {floor:>10,.0f} calls/s")
    print(f"store.update, one at a time        {one:>10,.0f} calls/s   ratio {math.floor(ratio * 1000) / 1000:.3f}x  "
          f"{'OK' if ratio >= 0.80 else 'BELOW'} (target >= 0.80x; median of 7 interleaved rounds)")
    print(f"store.update_many, batches of {args.batch:<4} {batched:>10,.0f} updates/s  "
          f"{'OK' if batched >= 30000 else 'BELOW'} (target >= 30,000/s)")
    return 0 if ratio >= 0.80 and batched >= 30000 else 1


if __name__ == "__main__":
    sys.exit(main())
