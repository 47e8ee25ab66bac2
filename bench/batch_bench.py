"""What a batch costs: reading a 1,000-member batch's snapshot, and a member's update.

Prints, against the Redis at REDIS_URL (default redis://127.0.0.1:6379/0):
- batch snapshot reads/s (store.get_batch, 1,000 members) against one job's snapshot
  reads/s (store.get), and their ratio;
- store.update calls/s of a batch member against a lone job's, and their ratio
  (goal: membership adds at most 20 % to an update, i.e. a ratio >= 0.833).
The two of each pair alternate in short rounds (bench/update_bench.py's ``interleaved``),
so a busy machine slows both alike.

    python bench/batch_bench.py [--seconds 3] [--members 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_bench import interleaved  # noqa: E402

from progress_service import ProgressStore, Settings  # noqa: E402

GOAL = 1 / 1.2  # a member's update at most 20 % slower than a lone job's


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--members", type=int, default=1000, help="members of the batch read")
    args = ap.parse_args()

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({"REDIS_URL": url, "PROGRESS_KEY_PREFIX": prefix})
    client = redis.Redis.from_url(url, decode_responses=True)
    store = ProgressStore(client, settings)
    try:
        job_ids = [f"m{i}" for i in range(args.members)]
        store.create_batch("b", job_ids, "video")
        for i, job_id in enumerate(job_ids):
            store.create_job(job_id, "31452104", batch_id="b", tags=["bench"])
            store.update(job_id, progress_percent=i % 100)
        store.create_job("lone", "31452104")
        store.update("lone", progress_percent=1)
        one, batch, read_ratio = interleaved(lambda: store.get("lone"), lambda: store.get_batch("b"),
                                             args.seconds)

        counter = iter(range(10**9))
        lone_rate, member_rate, update_ratio = interleaved(
            lambda: store.update("lone", progress_percent=1 + next(counter) * 1e-7),
            lambda: store.update("m1", progress_percent=1 + next(counter) * 1e-7),
            2 * args.seconds,
        )
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)

    print(f"redis {client.info('server')['redis_version']} at {url}")
    print(f"one job's snapshot (store.get)              {one:>10,.0f} reads/s")
    print(f"a {args.members}-member batch's snapshot (get_batch) {batch:>10,.0f} reads/s   "
          f"ratio {read_ratio:.4f}x ({1 / read_ratio:,.0f} job reads' worth; "
          f"{batch * args.members:,.0f} members/s)")
    print(f"update of a lone job                        {lone_rate:>10,.0f} calls/s")
    ok = update_ratio >= GOAL
    print(f"update of a batch member                    {member_rate:>10,.0f} calls/s   "
          f"ratio {math.floor(update_ratio * 1000) / 1000:.3f}x  {'OK' if ok else 'BELOW'} "
          f"(goal >= {GOAL:.3f}x: membership adds at most 20 %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
