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

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from update_bench import interleaved  # noqa: E402

GOAL = 1 / 1.2  # a member's update at most 20 % slower than a lone job's


def main() -> int:
    ap = _common.arguments(__doc__, seconds=3.0)
    ap.add_argument("--members", type=int, default=1000, help="members of the batch read")
    args = ap.parse_args()

    url, prefix, client, store = _common.redis_store(decode_responses=True)
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
        _common.drop_keys(client, f"{prefix}*")

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
