"""The live dashboard's costs (web/live.py, issue 13): its counts, and its fan-out.

1. The counts' read, over --jobs jobs (the recent-jobs index keeps 10,000): the board reads
   them with one HMGET of a few fields per job (ProgressStore.job_summaries) when it starts and
   every five minutes; the job list reads each job's full snapshot (ProgressStore.get_many, one Lua
   script per job). Best of three.
2. The fan-out: --dashboards open dashboard queues in one process (the app's own Board, fed by
   its one pub/sub listener), --updates progress updates over 50 running jobs as fast as Redis
   takes them; how long until every dashboard has every job frame, and the Redis connections the
   process holds meanwhile.

Goal: the counts' read of 10,000 jobs well under a second (it runs every five minutes, not per
client), and the fan-out on the same few connections however many dashboards are open.
"""

from __future__ import annotations

import sys
import threading
import time

from _common import arguments, drop_keys, redis_store, verdict

from progress_service import Settings
from web import create_app
from web.live import Frame


def best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--dashboards", type=int, default=100)
    parser.add_argument("--updates", type=int, default=2_000)
    args = parser.parse_args()
    url, prefix, client, store = redis_store(decode_responses=True)
    app = None
    try:
        for i in range(args.jobs):
            store.create_job(f"j{i}", f"paper{i}", tags=["bench"])
        ids = store.recent_job_ids(args.jobs)
        summaries = best_of(3, lambda: store.job_summaries(ids))
        full = best_of(3, lambda: store.get_many(ids))
        print(f"counts' read of {len(ids)} jobs: {summaries * 1000:.0f} ms (HMGET of 7 fields each); "
              f"the job list's full read of the same: {full * 1000:.0f} ms ({full / summaries:.1f}x)")

        settings = Settings.from_env({"REDIS_URL": url, "PROGRESS_KEY_PREFIX": prefix,
                                      "PROGRESS_MIN_INTERVAL": "0"})
        app = create_app(settings)
        board = app.extensions["progress_board"]
        store = app.extensions["progress"]  # PROGRESS_MIN_INTERVAL=0: every update is an event
        watchers = [board.subscribe() for _ in range(args.dashboards)]
        running = [f"j{i}" for i in range(min(50, args.jobs))]
        for job_id in running:
            store.update(job_id, status="running", progress_percent=0.1)
        time.sleep(0.5)
        for w in watchers:  # what came before the clock starts
            while w.get(0) is not None:
                pass
        seen = [0] * len(watchers)
        resyncs = [0]

        def drain() -> None:  # the dashboards read as they go, as their streams do
            deadline = time.monotonic() + 60
            while min(seen) < args.updates and time.monotonic() < deadline:
                for i, w in enumerate(watchers):
                    item = w.get(0)
                    while item is not None:
                        if isinstance(item, tuple):
                            seen[i] += sum(1 for f in item if isinstance(f, Frame) and f.kind == "job")
                        else:
                            resyncs[0] += 1
                        item = w.get(0)
                time.sleep(0.001)

        reader = threading.Thread(target=drain)
        started = time.perf_counter()
        reader.start()
        for n in range(args.updates):
            job_id = running[n % len(running)]
            store.update(job_id, progress_percent=round(1 + 98 * n / args.updates, 3))
        sent = time.perf_counter() - started
        reader.join()
        took = time.perf_counter() - started
        names = [c.get("name", "") for c in client.client_list()]
        mine = [n for n in names if n.startswith(f"{prefix}.web.")]
        print(f"fan-out: {args.updates} updates (sent in {sent:.2f} s) reached all {args.dashboards} "
              f"dashboards in {took:.2f} s: {args.updates * args.dashboards / took:,.0f} frames/s, "
              f"{min(seen)} of {args.updates} each ({resyncs[0]} resyncs); Redis connections of the "
              f"process: {len(mine)}")
        for w in watchers:
            w.close()
        met = summaries < 1.0 and min(seen) == args.updates and len(mine) <= 4
        return verdict("dashboard", met, "goal met", "goal missed")
    finally:
        if app is not None:
            app.extensions["progress_events"].close()
        drop_keys(client, f"{prefix}*")
        client.close()


if __name__ == "__main__":
    sys.exit(main())
