"""Subcommands about the data: watch, mirror, db, demo.

- ``watch JOB_ID``: a live bar from pub/sub; the exit code tells how the job ended.
- ``mirror``: copy every finished job PostgreSQL lacks (the due set, then a SCAN).
- ``db upgrade`` / ``db status``: the PostgreSQL schema (``progress_service.migrations``).
- ``demo``: the whole stack on one machine (``progress_cli.demo``).
"""

from __future__ import annotations

import argparse
import sys

from progress_cli import exit_codes
from progress_cli.parsers import add_command
from progress_service import JobNotFound, ProgressStore, Settings
from progress_service.errors import BackendUnavailable

WATCH_EPILOG = """\
exit status:
  0    the job completed
  1    the job failed
  2    the job was canceled
  64   a bad command line or job id
  66   no job has that id (neither Redis nor PostgreSQL knows it)
  69   Redis does not answer
  78   the configuration is not usable (a malformed REDIS_URL, ...)
  124  --timeout passed before the job finished
  130  interrupted (Ctrl-C)

A job still waiting in its queue with no worker listening there is said once on
stderr ("no worker is listening on queue ..."); the bar goes on waiting.

examples:
  progress-service watch 3f9c1d2e-...           # a bar on stderr until the job ends
  progress-service submit 34265844 | xargs progress-service watch
  progress-service watch JOB_ID --timeout 600 && echo done

A job that Redis has expired (PROGRESS_JOB_TTL) is read from PostgreSQL, and its
final state printed at once."""

MIRROR_EPILOG = """\
exit status: 0 done; 69 Redis or PostgreSQL does not answer; 78 the configuration
is not usable, or the schema is missing or behind (run progress-service db upgrade).

The worker's mirror thread does this every second; run it by hand after an outage,
or to copy jobs whose due entry was lost (a writer died between its update and the
queueing), which only the scan finds. Safe to run at any time and concurrently with
the workers: a row is only ever replaced by one with a higher seq.

examples:
  progress-service mirror                  # prints how many rows landed
  progress-service mirror --no-scan        # the due set only: fast, no SCAN of Redis
  DATABASE_URL=postgresql://app@db/progress progress-service mirror"""

DB_EPILOG = """\
exit status: 0 done (db status: every migration applied); 69 PostgreSQL does not
answer; 78 the configuration is not usable (a malformed DATABASE_URL), or, for
db status, a migration is pending (the schema is behind: run db upgrade).

examples:
  progress-service db upgrade     # before the first start, and after each upgrade of the code
  progress-service db status      # the applied versions and the pending ones"""

UPGRADE_EPILOG = """\
Applies the migrations the database lacks (progress_service/migrations/NNNN_*.sql),
each in a transaction with its row in schema_migrations. Safe to run twice and from
several places at once (an advisory lock serialises them); prints the versions
applied, or "already up to date".

exit status: 0 done; 69 PostgreSQL does not answer; 78 a malformed DATABASE_URL.

examples:
  progress-service db upgrade
  DATABASE_URL=postgresql://app@db:5432/progress progress-service db upgrade"""


def register(subparsers) -> None:
    watch = add_command(
        subparsers, "watch", cmd_watch, help="a live terminal bar of one job (or a batch), from pub/sub",
        description="Draw a live progress bar of JOB_ID on stderr until it ends; print the "
        "final state on stdout. The exit status tells how the job ended.",
        epilog=WATCH_EPILOG)
    watch.add_argument("job_id", metavar="JOB_ID|BATCH_ID",
                       help="the job's or the batch's id (what submit printed); a batch: one line "
                            "per member (as many as the terminal has rows for) and a total")
    watch.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="give up after this many seconds (exit 124)")

    mirror = add_command(
        subparsers, "mirror", cmd_mirror, help="copy every finished job not yet in PostgreSQL",
        description="Copy every finished job that PostgreSQL lacks into progress_jobs: first "
        "the jobs queued for the mirror, then a SCAN of Redis for any the queue lost.",
        epilog=MIRROR_EPILOG)
    mirror.add_argument("--no-scan", action="store_true",
                        help="only the queued jobs; skip the SCAN of every job in Redis")

    db = add_command(
        subparsers, "db", help="the PostgreSQL schema: upgrade, status",
        description="Manage the PostgreSQL schema (table progress_jobs) at DATABASE_URL.",
        epilog=DB_EPILOG)
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    add_command(
        db_sub, "upgrade", cmd_db_upgrade, help="create or upgrade the schema",
        description="Create or upgrade the PostgreSQL schema at DATABASE_URL.",
        epilog=UPGRADE_EPILOG)
    add_command(
        db_sub, "status", cmd_db_status, help="the applied and the pending migrations",
        description="Print the migrations applied at DATABASE_URL and the pending ones; "
        "exit 78 (the schema is not usable yet) if any is pending, 0 if none.",
        formatter_class=argparse.HelpFormatter)

    from progress_cli import demo

    demo.register(subparsers)


def cmd_watch(args: argparse.Namespace) -> int:
    from progress_cli.terminal import NoWorkerNotice, exit_code_for, follow_job, summary_line
    from progress_service.models import validate_id

    validate_id(args.job_id)
    settings = Settings.from_env()
    store = ProgressStore.from_settings(settings)
    if store.get(args.job_id) is None and store.batch_fields(args.job_id):
        return _watch_batch(store, args)
    try:
        with NoWorkerNotice(settings, args.job_id, "watch"):
            final = follow_job(store, args.job_id, out=sys.stderr, timeout=args.timeout)
    except JobNotFound:
        from progress_service.mirror import Mirror  # psycopg: only for a job Redis expired

        mirrored = None
        try:
            with Mirror(store, settings.database_url) as mirror:
                mirrored = mirror.fetch(args.job_id)
        except BackendUnavailable as exc:
            print(f"progress-service watch: PostgreSQL not asked ({exc})", file=sys.stderr)
        if mirrored is None:
            print(f"progress-service watch: job {args.job_id} not found "
                  "(neither Redis nor PostgreSQL knows it)", file=sys.stderr)
            return exit_codes.NOT_FOUND
        final = mirrored
        print(f"job {args.job_id} finished at {final['finished_at']} (from PostgreSQL; "
              "Redis has expired it)", file=sys.stderr)
    except TimeoutError:
        print(f"progress-service watch: job {args.job_id} did not finish within "
              f"{args.timeout:g}s", file=sys.stderr)
        return exit_codes.TIMEOUT
    print(summary_line(final))
    return exit_code_for(final["status"])


def _watch_batch(store, args: argparse.Namespace) -> int:
    """``watch BATCH_ID``: one line per member and a total, until the batch has finished."""
    from progress_cli.terminal import exit_code_for, follow_batch

    try:
        final = follow_batch(store, args.job_id, out=sys.stderr, timeout=args.timeout)
    except JobNotFound:
        print(f"progress-service watch: batch {args.job_id} not found", file=sys.stderr)
        return exit_codes.NOT_FOUND
    except TimeoutError:
        print(f"progress-service watch: batch {args.job_id} did not finish within "
              f"{args.timeout:g}s", file=sys.stderr)
        return exit_codes.TIMEOUT
    print(f"{args.job_id} {final['status']}: {final['completed']} completed, {final['failed']} failed, "
          f"{final['canceled']} canceled of {final['total']}")
    return exit_code_for(final["status"])


def cmd_mirror(args: argparse.Namespace) -> int:
    from progress_service.mirror import Mirror

    settings = Settings.from_env()
    with Mirror(ProgressStore.from_settings(settings), settings.database_url) as mirror:
        swept = mirror.sweep(limit=None)
        scanned = 0 if args.no_scan else mirror.backfill()
        mirror.keep_batches(limit=10_000)  # the finished batches, with their members in place
        total = mirror.count()
    found = "" if args.no_scan else f", {scanned} found by the scan"
    print(f"{swept + scanned} rows landed in PostgreSQL ({swept} queued{found}); "
          f"progress_jobs holds {total}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from progress_service import migrations

    applied = migrations.upgrade(Settings.from_env().database_url)
    for migration in applied:
        print(f"applied {migration}")
    if not applied:
        print(f"already up to date (version {migrations.latest_version()})")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from progress_service import migrations

    url = Settings.from_env().database_url
    with migrations.connect(url) as conn:
        done = migrations.applied_versions(conn)
    for migration in migrations.available():
        state = "applied" if migration.version in done else "pending"
        print(f"{migration}  {state}")
    pending = any(m.version not in done for m in migrations.available())
    return exit_codes.CONFIG if pending else 0
