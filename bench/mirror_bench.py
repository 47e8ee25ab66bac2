"""How fast the mirror copies finished jobs to PostgreSQL, against floors measured in the same run.

Against the Redis at REDIS_URL and the PostgreSQL at DATABASE_URL (defaults:
redis://127.0.0.1:6379/0, postgresql://postgres@127.0.0.1:5432/postgres), in a
schema of its own (dropped afterwards) and under a key prefix of its own:

- mirror: ``Mirror.sweep`` of N finished jobs, each with its history: read from
  Redis in pipelined batches, upserted with one ``executemany`` per batch (one
  transaction each), the due entries removed: jobs/s;
- floor 1: the same rows, already built in memory, with a bare ``executemany``
  of a plain INSERT into an equivalent table, the same batch size;
- floor 2: the same rows with ``COPY`` into an equivalent table;
and the ratios. Target: the mirror >= 5,000 jobs/s.

    python bench/mirror_bench.py [--jobs 10000] [--batch 500]
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

from progress_service import ProgressStore, migrations  # noqa: E402
from progress_service.mirror import COLUMNS, Mirror  # noqa: E402
from progress_service.models import DEFAULT_STEPS  # noqa: E402

TARGET = 5000.0


def make_jobs(store: ProgressStore, n: int) -> list[str]:
    """``n`` jobs that ran every step and finished (a third failed), as a worker leaves them."""
    ids = [f"bench-{i:06d}" for i in range(n)]
    for job_id in ids:
        store.create_job(job_id, "31452104", steps=DEFAULT_STEPS)
    for start in range(0, n, 500):
        chunk = ids[start:start + 500]
        for i, step in enumerate(DEFAULT_STEPS):
            store.update_many([{"job_id": j, "status": "running", "current_step": step,
                                "progress_percent": i * 20, "message": f"{step} ..."} for j in chunk])
        store.update_many([
            {"job_id": j, "progress_percent": 100, "result": {"video_url": f"file:///{j}.mp4"}}
            if k % 3 else {"job_id": j, "status": "failed", "error": "ffmpeg exited with code 1"}
            for k, j in enumerate(chunk)
        ])
    return ids


def main() -> int:
    ap = _common.arguments(__doc__)
    ap.add_argument("--jobs", type=int, default=10000, help="finished jobs to mirror")
    ap.add_argument("--batch", type=int, default=500, help="jobs per batch (one transaction each)")
    args = ap.parse_args()

    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    _, prefix, client, store = _common.redis_store()
    admin = psycopg.connect(database_url, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    url = _common.with_search_path(database_url, schema)
    try:
        migrations.upgrade(url)
        print(f"preparing {args.jobs} finished jobs (6 history entries each) in Redis ...")
        ids = make_jobs(store, args.jobs)
        with Mirror(store, url, batch_size=args.batch) as mirror:
            rows = mirror.load_rows(ids)  # the floors' rows: the very ones the mirror writes
            start = time.perf_counter()
            written = mirror.sweep(limit=None)
            mirror_s = time.perf_counter() - start
        assert written == args.jobs, (written, args.jobs)
        mirror_rate = args.jobs / mirror_s

        names = ", ".join(name for name, _ in COLUMNS)
        insert = (f"INSERT INTO floor_insert ({names}) VALUES "
                  f"({', '.join(f'%s::{kind}' for _, kind in COLUMNS)})")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE floor_insert (LIKE progress_jobs INCLUDING ALL)")
            conn.execute("CREATE TABLE floor_copy (LIKE progress_jobs INCLUDING ALL)")
            start = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(insert, rows[i:i + args.batch])
            insert_s = time.perf_counter() - start

            start = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(f"COPY floor_copy ({names}) FROM STDIN") as copy:
                        for row in rows[i:i + args.batch]:
                            copy.write_row(row)
            copy_s = time.perf_counter() - start
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("progress_jobs", "floor_insert", "floor_copy")]
        assert counts == [args.jobs] * 3, counts
        insert_rate, copy_rate = args.jobs / insert_s, args.jobs / copy_s

        print(f"mirror.sweep (Redis read + upsert + due-set cleanup): {mirror_rate:10,.0f} jobs/s")
        print(f"floor: bare executemany INSERT, rows prebuilt:        {insert_rate:10,.0f} jobs/s")
        print(f"floor: COPY, rows prebuilt:                           {copy_rate:10,.0f} jobs/s")
        print(f"ratio mirror / executemany floor: {mirror_rate / insert_rate:.2f}")
        print(f"ratio mirror / COPY floor:        {mirror_rate / copy_rate:.2f}")
        return _common.verdict(f"target >= {TARGET:,.0f} jobs/s", mirror_rate >= TARGET,
                               "meets", "MISSES")
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()
        _common.drop_keys(client, f"{prefix}:*")
        client.close()


if __name__ == "__main__":
    sys.exit(main())
