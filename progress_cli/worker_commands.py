"""Subcommands about running jobs: worker, submit, retry, run, papers.

- ``worker``: an RQ worker on the pipeline queue, with the lost-job sweeper and
  (unless ``--no-mirror``) the PostgreSQL mirror loop in threads beside it.
- ``submit PAPER_ID``: queue a job; ``--wait`` follows it with a live bar.
- ``retry JOB_ID``: a new attempt of a failed or canceled job; ``--wait`` as submit's.
- ``run -- CMD ARG...``: any command as a tracked job, no queue, no worker.
- ``papers``: the bundled paper ids.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid

from progress_cli import exit_codes
from progress_cli.parsers import add_command
from progress_service import JobConflict, ProgressStore, Settings
from progress_service.config import redacted_url
from progress_service.errors import BackendUnavailable, InvalidInput
from progress_service.models import validate_id, validate_steps, validate_tags

logger = logging.getLogger("progress_cli.worker")
RUN_MIRROR_TIMEOUT = 10  # seconds `run` gives PostgreSQL to take its finished job


WORKER_EPILOG = """\
Runs jobs from the queue PROGRESS_QUEUE (default "pipelines") on REDIS_URL, each in a
forked work horse, its pipeline in a process group of its own. Beside it, in threads:
  - the lost-job sweeper: a running job whose heartbeat is older than
    PROGRESS_WORKER_LOST_AFTER seconds (default 30; its worker was killed) ends
    failed with the error "worker lost", in RQ too;
  - the mirror (unless --no-mirror): finished jobs copied to PostgreSQL at DATABASE_URL;
    skipped with a log line when progress_service.mirror is missing, retried with
    back-off while PostgreSQL is down;
  - the pipelines it knows (bundled, PROGRESS_PIPELINES, entry points; see
    `progress-service pipelines`) announced in Redis while it lives: a submit of a
    pipeline that a live worker of the queue does not know is refused.
Stop it with Ctrl-C or SIGTERM (a warm shutdown: the running job is finished first);
a second Ctrl-C kills the job's process tree and the job ends failed.

exit status: 0 stopped (Ctrl-C, SIGTERM) or, with --burst, the queue emptied; 69 Redis
does not answer; 78 the configuration is not usable (a malformed REDIS_URL, a broken
PROGRESS_PIPELINES file or pipeline entry point, ...).

examples:
  progress-service worker                         # run until stopped
  progress-service worker --burst --no-mirror     # empty the queue, then exit
  PROGRESS_QUEUE=videos REDIS_URL=redis://redis:6379/0 progress-service worker"""

SUBMIT_EPILOG = """\
Prints the job id on stdout (several PAPER_IDs: one batch, and its id). With --wait,
draws a live bar on stderr until the job (or every job of the batch) ends.

exit status (with --wait): 0 completed, 1 failed, 2 canceled; 124 --timeout passed;
130 interrupted. 64 for bad input, a job id already taken, or a pipeline that this
process or a live worker of the queue does not know (see `progress-service pipelines`);
69 when Redis does not answer, 78 when the configuration is not usable (a malformed
REDIS_URL, a broken PROGRESS_PIPELINES file, ...).
While the job waits in its queue with no worker listening there, --wait says so once.

examples:
  progress-service submit 34265844                    # prints the job id
  progress-service submit 34265844 --wait             # ... and follows it to the end
  progress-service submit 34265844 --pipeline video --job-id paper-34265844-1
  progress-service submit 34265844 --retries 3        # a failure runs again, up to 3 times
  progress-service submit 34265844 25719670 --tag team-a   # one batch; prints its id
  progress-service watch "$(progress-service submit 34265844)\""""

RETRY_EPILOG = """\
Prints the new job's id. It has JOB_ID's paper, pipeline and tags, attempt + 1 and
retry_of JOB_ID; the paper's page follows it and lists the earlier attempts. A job is
retried once: retry the newest attempt. A job Redis has expired is read from PostgreSQL.

exit status: 0 queued (with --wait: 0 completed, 1 failed, 2 canceled; 124 --timeout
passed); 64 a bad id, or a job that is not failed or canceled, or retried already;
66 no such job in Redis or PostgreSQL; 69 Redis does not answer.

examples:
  progress-service retry 3f2a9c...                    # prints the new job's id
  progress-service retry 3f2a9c... --wait             # ... and follows it to the end"""

CANCEL_EPILOG = """\
exit status: 0 canceled; 64 a bad id, or a job that had already finished; 66 no such job
or batch in Redis; 69 Redis does not answer.

examples:
  progress-service cancel "$(progress-service submit 34265844)"
  progress-service cancel "$(progress-service submit 34265844 25719670)"   # a batch"""

RUN_EPILOG = """\
Runs CMD right here as a tracked job (no queue, no worker): the job is created, its
progress parsed from CMD's output (STEP / PROGRESS / JSON lines, tqdm bars) and written
to the store, and it ends completed, failed (with CMD's exit code and the last lines of
its stderr) or canceled (Ctrl-C, or a cancel from the API: CMD's process tree is killed).
The job id and where to see it go to stderr. When the job ends, run copies it to
PostgreSQL (DATABASE_URL) itself; if PostgreSQL does not answer, the job waits in Redis
for the next `progress-service mirror`. The exit status is CMD's own (64 for a
bad command line before CMD starts, 69 when Redis does not answer, 78 when the
configuration is not usable, 130 when interrupted).

examples:
  progress-service run --pipeline video --paper-id 34265844 -- \\
      python -m worker.pipelines.video 34265844 --out /tmp/video
  progress-service run --steps download,convert,upload -- ./publish.sh
  progress-service run --job-id nightly-2024-05-01 --paper-id 34265844 --timeout 3600 -- make all"""

PAPERS_EPILOG = """\
examples:
  progress-service papers
  progress-service submit "$(progress-service papers | head -1 | cut -f1)" --wait"""


def register(subparsers) -> None:
    worker = add_command(
        subparsers, "worker", cmd_worker,
        help="an RQ worker for the pipeline queue (with the lost-job sweeper and the mirror)",
        description="Run an RQ worker on the pipeline queue.", epilog=WORKER_EPILOG)
    worker.add_argument("--burst", action="store_true",
                        help="exit once the queue is empty instead of waiting for jobs")
    worker.add_argument("--mirror", dest="mirror", action="store_true", default=True,
                        help="copy finished jobs to PostgreSQL in a thread (the default)")
    worker.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="do not run the PostgreSQL mirror loop")
    worker.add_argument("--simple", action="store_true",
                        help="run jobs in this process (RQ's SimpleWorker) instead of a forked "
                             "work horse")
    worker.add_argument("--name", default=None, help="the worker's name (default: a random one)")

    submit = add_command(
        subparsers, "submit", cmd_submit, help="queue a pipeline job for a paper; prints the job id",
        description="Create a job for PAPER_ID (pending) and queue it for a worker.",
        epilog=SUBMIT_EPILOG)
    submit.add_argument("paper_ids", metavar="PAPER_ID", nargs="+",
                        help="the paper, e.g. a PubMed id (see `progress-service papers`); "
                             "several: one batch of one job each, and the batch id is printed")
    submit.add_argument("--tag", dest="tags", action="append", default=[], metavar="T",
                        help="a label for the job(s), filterable in the list (repeatable, at most 16)")
    submit.add_argument("--pipeline", default="video", metavar="NAME",
                        help="the pipeline to run (default: video; `progress-service pipelines` "
                             "lists them)")
    submit.add_argument("--job-id", default=None, metavar="ID",
                        help="the job's id (default: a random one)")
    submit.add_argument("--retries", type=_retries, default=0, metavar="N",
                        help="retry a failure up to N times (0-10), each a new job after a "
                             "doubling backoff (PROGRESS_RETRY_BACKOFF); one job only")
    _add_wait(submit, "the job")

    retry = add_command(
        subparsers, "retry", cmd_retry, help="a new attempt of a failed or canceled job; prints its id",
        description="Create and queue a new job for JOB_ID's paper, pipeline and tags (attempt + 1, "
        "retry_of JOB_ID). A resumable pipeline's retry skips the steps JOB_ID completed.",
        epilog=RETRY_EPILOG)
    retry.add_argument("job_id", metavar="JOB_ID", help="a failed or canceled job (Redis or PostgreSQL)")
    _add_wait(retry, "the new job")

    cancel = add_command(
        subparsers, "cancel", cmd_cancel, help="cancel a job, or every unfinished job of a batch",
        description="Cancel JOB_ID (its process tree killed if it runs), or BATCH_ID: the batch "
        "ends canceled and every member not yet finished is canceled.",
        epilog=CANCEL_EPILOG)
    cancel.add_argument("job_id", metavar="JOB_ID|BATCH_ID", help="what submit printed")

    run = add_command(
        subparsers, "run", cmd_run, help="run any command as a tracked job (no queue); exits with its code",
        description="Run CMD as a tracked job and exit with its exit status.",
        usage="progress-service run [options] -- CMD [ARG ...]",
        epilog=RUN_EPILOG)
    run.add_argument("--job-id", default=None, metavar="ID", help="the job's id (default: a random one)")
    run.add_argument("--paper-id", default=None, metavar="ID",
                     help="the paper the job belongs to (default: the job id)")
    run.add_argument("--steps", default=None, metavar="A,B,C",
                     help="the steps CMD announces with STEP lines, in order "
                          "(default: the --pipeline's, else one step named 'run')")
    run.add_argument("--pipeline", default=None, metavar="NAME",
                     help="take steps and weights from this pipeline (e.g. video)")
    run.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                     help="kill CMD after this long; the job fails as timed out")
    run.add_argument("--echo", action="store_true",
                     help="pass CMD's output through (stdout to stdout, stderr to stderr) "
                          "instead of drawing a bar")
    run.add_argument("--quiet", action="store_true", help="neither a bar nor CMD's output")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                     help="the command and its arguments, after --")

    add_command(
        subparsers, "papers", cmd_papers, help="the paper ids of the bundled offline set, with titles",
        description="List the bundled papers: id, a tab, the year and title.",
        epilog=PAPERS_EPILOG)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    """``--wait`` and ``--timeout``: follow ``what`` to its end (``_wait_for``)."""
    parser.add_argument("--wait", action="store_true",
                        help=f"follow {what} with a live bar; the exit status tells how it ended")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="with --wait: give up waiting after this long (exit 124)")


def _retries(text: str) -> int:
    from progress_service.queue import validate_retries

    try:
        return validate_retries(int(text))
    except (ValueError, InvalidInput):
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 10, got {text!r}") from None


def _fail(command: str, message: str, code: int = exit_codes.USAGE) -> int:
    print(f"progress-service {command}: {message}", file=sys.stderr)
    return code


# -- worker -----------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    import redis

    from progress_cli.extras import require

    require("worker")

    from progress_service.pipeline_workers import PipelineAnnouncer
    from progress_service.pipelines import load_pipelines
    from progress_service.queue import rq_connection
    from worker.jobs import ProgressSimpleWorker, ProgressWorker
    from worker.lost import LostJobSweeper

    settings = Settings.from_env()
    pipelines = load_pipelines(settings)  # a broken PROGRESS_PIPELINES or entry point: 78, now
    conn = rq_connection(settings)
    try:
        conn.ping()
    except redis.RedisError as exc:
        return _fail("worker", f"Redis at {redacted_url(settings.redis_url)} does not answer: {exc}",
                     exit_codes.UNAVAILABLE)
    store = ProgressStore.from_settings(settings)
    stop = threading.Event()
    threads = []
    sweeper = LostJobSweeper(store, settings, rq_connection=conn, queue_names=[settings.queue_name])
    threads.append(sweeper.start(stop))
    mirror_state = "off (--no-mirror)"
    if args.mirror:
        mirror_thread, mirror_state = _start_mirror(store, settings, stop)
        if mirror_thread is not None:
            threads.append(mirror_thread)
    worker_class = ProgressSimpleWorker if args.simple else ProgressWorker
    worker = worker_class([settings.queue_name], connection=conn, store=store, name=args.name)
    announcer = PipelineAnnouncer(conn, settings, worker.name, pipelines)
    logger.info(
        "worker %s: queue %r on %s; progress store %s (prefix %r); jobs failed as worker lost "
        "after %gs without a heartbeat; mirror %s; %s",
        worker.name, settings.queue_name, redacted_url(settings.redis_url),
        redacted_url(settings.progress_redis_url), settings.key_prefix, settings.worker_lost_after,
        mirror_state, "burst mode" if args.burst else "waiting for jobs")
    try:
        announcer.start(stop)  # withdrawn in the finally below
        # with_scheduler: RQ's scheduler queues an automatic retry when its backoff is over
        worker.work(burst=args.burst, logging_level="DEBUG" if args.verbose else None, with_scheduler=True)
    finally:
        stop.set()
        announcer.stop()
        for thread in threads:
            thread.join(timeout=5)
    logger.info("worker %s: stopped", worker.name)
    return 0


def _start_mirror(store, settings: Settings, stop: threading.Event):
    from progress_service.mirror import Mirror

    try:
        mirror = Mirror(store, settings.database_url)
    except Exception as exc:  # the mirror retries a dead PostgreSQL itself; this is worse
        logger.warning("mirror: not started (%s)", exc)
        return None, f"not started ({exc})"
    thread = threading.Thread(target=mirror.run_forever, args=(stop,), name="mirror", daemon=True)
    thread.start()
    return thread, f"on ({redacted_url(settings.database_url)})"


# -- submit -----------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from progress_service.queue import submit_job

    settings = Settings.from_env()
    store = ProgressStore.from_settings(settings)
    if len(args.paper_ids) > 1:
        return _submit_batch(args, settings, store)
    try:
        job_id = submit_job(settings, args.paper_ids[0], args.pipeline, job_id=args.job_id, store=store,
                            tags=validate_tags(args.tags), retries=args.retries)
    except (InvalidInput, JobConflict) as exc:
        return _fail("submit", str(exc))
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return _wait_for(settings, store, job_id, "submit", args.timeout)


def _wait_for(settings: Settings, store: ProgressStore, job_id: str, command: str,
              timeout: float | None) -> int:
    """``--wait``: a live bar until ``job_id`` ends; its outcome as the exit status."""
    from progress_cli.terminal import NoWorkerNotice, exit_code_for, follow_job, summary_line

    try:
        with NoWorkerNotice(settings, job_id, command):
            final = follow_job(store, job_id, out=sys.stderr, timeout=timeout)
    except TimeoutError:
        return _fail(command, f"job {job_id} did not finish within {timeout:g}s", exit_codes.TIMEOUT)
    print(f"job {summary_line(final)}", file=sys.stderr)
    return exit_code_for(final["status"])


# -- retry ------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    from progress_service.retries import retry_job

    validate_id(args.job_id, "job_id")
    settings = Settings.from_env()
    store = ProgressStore.from_settings(settings)

    def from_postgres(job_id: str) -> dict | None:
        from progress_service.mirror import Mirror  # psycopg: only for a job Redis expired

        with Mirror(store, settings.database_url) as mirror:
            return mirror.fetch(job_id)

    # unknown: 66; not failed or canceled, or retried already: 64; Redis or PostgreSQL down: 69
    job_id = retry_job(settings, args.job_id, store=store, find=from_postgres)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return _wait_for(settings, store, job_id, "retry", args.timeout)


def _submit_batch(args: argparse.Namespace, settings: Settings, store) -> int:
    from progress_cli.terminal import exit_code_for, follow_batch
    from progress_service.queue import submit_batch

    if args.job_id is not None:
        return _fail("submit", "--job-id names one job: give one PAPER_ID with it")
    if args.retries:
        return _fail("submit", "--retries goes with one PAPER_ID: a batch's members are not retried")
    try:
        batch_id, _job_ids = submit_batch(settings, args.paper_ids, args.pipeline, tags=args.tags,
                                          store=store)
    except InvalidInput as exc:
        return _fail("submit", str(exc))
    print(batch_id, flush=True)
    if not args.wait:
        return 0
    try:
        final = follow_batch(store, batch_id, out=sys.stderr, timeout=args.timeout)
    except TimeoutError:
        return _fail("submit", f"batch {batch_id} did not finish within {args.timeout:g}s",
                     exit_codes.TIMEOUT)
    return exit_code_for(final["status"])


# -- cancel -----------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace) -> int:
    from progress_service import queue

    validate_id(args.job_id, "id")
    settings = Settings.from_env()
    store = ProgressStore.from_settings(settings)
    if store.get(args.job_id) is None and store.batch_fields(args.job_id):
        canceled = queue.cancel_batch(settings, args.job_id, store=store)
        print(f"batch {args.job_id} canceled ({len(canceled)} unfinished jobs canceled)")
        return 0
    queue.cancel_job(settings, args.job_id, store=store)  # unknown: 66; finished already: 64
    print(f"job {args.job_id} canceled")
    return 0


# -- run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from worker.runner import run_command

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        return _fail("run", "no command given: put it after --, e.g. "
                            "progress-service run -- python script.py")
    try:
        job_id = validate_id(args.job_id, "job_id") if args.job_id else uuid.uuid4().hex
        paper_id = validate_id(args.paper_id, "paper_id") if args.paper_id else job_id
        steps, weights, pipeline = _run_steps(args)
    except (InvalidInput, ValueError) as exc:
        return _fail("run", str(exc))
    settings = Settings.from_env()
    store = ProgressStore.from_settings(settings)
    try:
        store.create_job(job_id, paper_id, steps=steps, pipeline=pipeline)
    except JobConflict as exc:
        return _fail("run", f"{exc}; choose another --job-id")
    print(f"progress-service run: job {job_id} (paper {paper_id}): "
          f"GET /api/v1/jobs/{job_id} or /status/{paper_id}/ on the web server; "
          f"progress-service watch {job_id}", file=sys.stderr, flush=True)

    bar = None
    if not args.echo and not args.quiet:
        bar = _BarThread(settings, job_id)
        if sys.stderr.isatty() and not args.verbose:  # log lines would tear the bar
            for name in ("worker.runner", "progress_service.store"):
                logging.getLogger(name).setLevel(logging.WARNING)
        bar.start()
    on_output = _echo if args.echo else None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_command(store, job_id, argv, steps=steps, weights=weights, settings=settings,
                              on_output=on_output, timeout=args.timeout)
    except KeyboardInterrupt:
        if bar is not None:
            bar.join()
        _mirror_own_job(store, settings, job_id)
        print(f"progress-service run: job {job_id} canceled (interrupted)", file=sys.stderr)
        return exit_codes.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if bar is not None:
        bar.join()
    _mirror_own_job(store, settings, job_id)
    line = f"progress-service run: job {job_id} {outcome.status}"
    if outcome.error:
        lines = outcome.error.splitlines()
        line += f": {lines[0]}" if len(lines) == 1 else f": {lines[0]} … {lines[-1]}"
    print(line, file=sys.stderr)
    if outcome.survivors:
        print(f"progress-service run: processes left running: {outcome.survivors}", file=sys.stderr)
    return outcome.shell_exit_code


def _mirror_own_job(store, settings: Settings, job_id: str) -> None:
    """Copy the finished job to PostgreSQL now: where ``run`` is used, no worker or
    ``progress-service mirror`` may ever run to do it. If PostgreSQL does not answer
    (within RUN_MIRROR_TIMEOUT), the job stays in the mirror's due set, and in Redis
    (it does not expire before it is mirrored), for the next mirror; the exit code is
    the command's either way."""
    try:
        from progress_service.mirror import Mirror

        with Mirror(store, settings.database_url, connect_timeout=RUN_MIRROR_TIMEOUT,
                    timeout=RUN_MIRROR_TIMEOUT) as mirror:
            mirror.mirror_job(job_id)
    except Exception as exc:  # noqa: BLE001 - the job is safe in Redis; say so and go on
        print(f"progress-service run: job {job_id} is not in PostgreSQL yet ({exc}); it waits in "
              f"Redis for `progress-service mirror` or a worker's mirror", file=sys.stderr)


def _run_steps(args: argparse.Namespace):
    if args.steps is not None and args.pipeline is not None:
        raise InvalidInput("give --steps or --pipeline, not both")
    if args.pipeline is not None:
        from progress_service.pipelines import require_pipeline

        spec = require_pipeline(args.pipeline, Settings.from_env())
        return list(spec.steps), spec.weights, spec.name
    if args.steps is not None:
        return validate_steps([s.strip() for s in args.steps.split(",")]), None, "command"
    return ["run"], None, "command"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _echo(stream: str, line: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(line + "\n")
    target.flush()


class _BarThread:
    """``follow_job`` on stderr in a thread, beside the command."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.thread = threading.Thread(target=self._run, name="bar", daemon=True)

    def _run(self) -> None:
        from progress_cli.terminal import follow_job

        try:
            follow_job(ProgressStore.from_settings(self.settings), self.job_id, out=sys.stderr)
        except (BackendUnavailable, OSError) as exc:
            logger.warning("run: the live bar stopped: %s", exc)
        except Exception:  # a bug in the bar: logged, and the command it watches runs on
            logger.exception("run: the live bar failed")

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=10)


# -- papers -----------------------------------------------------------------------


def cmd_papers(args: argparse.Namespace) -> int:
    from worker.pipelines.papers import list_papers

    for paper in list_papers():
        print(f"{paper.pmid}\t{paper.year}  {paper.title}")
    return 0
