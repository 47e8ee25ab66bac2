"""The RQ side of a job: the job function, its callbacks, and the worker classes.

Jobs are submitted and canceled by ``progress_service.queue`` (``submit_job``,
``cancel_job``), which names this module's functions by their dotted path:
``worker.jobs.run_pipeline``, ``worker.jobs.on_rq_failure``, ``worker.jobs.on_rq_stopped``.
What RQ does not promise (its private attributes, when it calls a worker's methods) is
used through ``worker.rq_adapter`` only.

One id for both sides: the RQ job id is the store's ``job_id``. The store is the
source of truth; RQ's job carries a copy of the progress in ``meta["progress"]``
(``{"percent", "step"}``) for the RQ dashboard, and where its command runs in
``meta["pipeline_process"]`` (``{"pid", "pgid", "host", "tag"}``: ``tag`` is the
``PROGRESS_JOB_TAG`` entry that marks the run's processes, by which they are killed).

How the two sides are kept in agreement:

========================  =====================================  ======================
what happens              the store                              RQ
========================  =====================================  ======================
submit                    ``pending`` (created first)            queued
the command exits 0       ``completed``, ``result``              finished
the command fails         ``failed``, exit code + stderr tail    failed (PipelineFailed)
job timeout               ``failed``, "timed out after N s"      failed (JobTimeoutException)
cancel while queued       ``canceled``                           canceled
cancel while running      ``canceled``, tree killed              stopped
worker SIGKILLed          ``failed``, "worker lost"              failed (worker.lost)
a failure, retries left   a new job, attempt + 1, ``pending``    scheduled after a backoff
========================  =====================================  ======================

A job submitted with ``"retries": N`` (RQ's ``meta["retries"]``) that fails (not canceled,
and not refused: its command exited 2, 64 or 65) is retried by its worker as a new job,
queued after a backoff by RQ's scheduler (``progress_service.retries``); a retry of a
``resumable`` pipeline starts in a copy of the previous attempt's folder (``worker.resume``).

The job timeout (``job_timeout``, else the pipeline's ``timeout``, else
``PROGRESS_JOB_TIMEOUT``, default 3600 s) is enforced by the runner, which kills
the command's tree cleanly; RQ's own alarm is moved ``TIMEOUT_BACKSTOP`` seconds
later as a backstop, because an exception raised by a signal handler into
arbitrary code could be swallowed on its way.
Videos go to ``$PROGRESS_OUTPUT_DIR/<job_id>/`` (default: a folder in the temp dir).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from progress_service import ProgressStore, Settings, Status
from progress_service.config import ConfigError
from progress_service.errors import ProgressError
from progress_service.pipelines import Pipeline, get_pipeline
from progress_service.retries import retry_failed
from progress_service.scripts import UpdateResult
from progress_service.store import connect
from worker.lost import WORKER_LOST, command_tag, kill_orphaned_tree
from worker.process_tree import KILL_GRACE, descendants, kill_process_tree
from worker.resume import RESUME_FROM_ENV, copy_previous_output
from worker.rq_adapter import HookedSimpleWorker, HookedWorker, rq_owns_alarm
from worker.runner import job_tag, run_command

logger = logging.getLogger(__name__)

__all__ = [
    "JobCanceled",
    "PipelineFailed",
    "ProgressSimpleWorker",
    "ProgressWorker",
    "on_rq_failure",
    "on_rq_stopped",
    "output_root",
    "run_pipeline",
]

TIMEOUT_BACKSTOP = 30  # seconds RQ's own alarm waits beyond the runner's deadline and kill grace
STOP_GRACE = 2.0  # seconds a stopped job's command gets between SIGTERM and SIGKILL


class JobCanceled(Exception):
    """The job was canceled (or finished by someone else) while it ran."""


class PipelineFailed(Exception):
    """The pipeline's command failed; the message is the job's error (``markup_free``),
    ``exit_code`` the command's (None: it was killed, or did not start). ``retryable`` False:
    the job was refused (a pipeline this worker does not run as submitted), no retry will help."""

    def __init__(self, message: str, exit_code: int | None = None, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.retryable = retryable


NO_TAGS = str.maketrans({"<": "\u2039", ">": "\u203a"})  # ‹ ›


def markup_free(text: str) -> str:
    """``text`` for RQ's exception info: ``<`` and ``>`` become ``‹`` and ``›``.

    rq-dashboard (0.9) puts a job's exception text into its page as HTML,
    unescaped, and that text is the pipeline's stderr: no tag may open in it.
    Look-alikes rather than ``&lt;``: the text reads the same on the dashboard's
    job page, in its job list (which does escape) and in a terminal. The store
    keeps the text as it was (the status page shows it as text).
    """
    return text.translate(NO_TAGS)


# -- configuration ----------------------------------------------------------------


def output_root(settings: Settings) -> Path:
    """Where jobs write their output: ``PROGRESS_OUTPUT_DIR``, else <tmp>/progress-service/videos."""
    raw = settings.output_dir or os.path.join(tempfile.gettempdir(), "progress-service", "videos")
    return Path(raw).expanduser().resolve()


# -- the job function -----------------------------------------------------------


def run_pipeline(paper_id: str, pipeline: str = "video") -> dict[str, Any]:
    """The RQ job: run ``pipeline`` for ``paper_id`` as the current RQ job's store job.

    Reads ``Settings.from_env()`` (the worker's environment). Returns
    ``{"status": "completed", "result": {...}}``; raises ``PipelineFailed``,
    ``JobTimeoutException`` (RQ's) or ``JobCanceled`` otherwise, so RQ records
    the same ending as the store.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_pipeline runs as an RQ job; use worker.runner.run_command otherwise")
    settings = Settings.from_env()
    store = ProgressStore(connect(settings), settings)
    spec = _known_pipeline(store, settings, job.id, pipeline)
    out_dir = output_root(settings) / job.id
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = job.timeout if job.timeout and job.timeout > 0 else None
    runner_timeout = _take_over_rq_alarm(timeout)
    tag = job_tag(settings.key_prefix, job.id)
    meta = _RQMeta(job, tag)
    env = _child_env()
    if spec.resumable:
        _resume(store, job.id, output_root(settings), out_dir, env)

    def describe(exc: BaseException) -> str | None:
        if isinstance(exc, JobTimeoutException) and timeout:
            return f"timed out after {timeout:g} s"
        return None

    try:
        outcome = run_command(
            store, job.id, spec.command(paper_id, str(out_dir), job.id), steps=spec.steps,
            weights=spec.weights, settings=settings, env=env, on_write=meta.on_write,
            on_start=meta.on_start, timeout=runner_timeout, describe_exception=describe, tag=tag,
        )
    finally:
        store.close()
    if outcome.status == Status.COMPLETED.value:
        return {"status": outcome.status, "result": outcome.result}
    if outcome.stopped_by == "timeout":
        raise JobTimeoutException(markup_free(outcome.error or f"timed out after {timeout} s"))
    if outcome.status == Status.CANCELED.value:
        raise JobCanceled(f"job {job.id} was canceled")
    raise PipelineFailed(markup_free(outcome.error or f"job {job.id} {outcome.status}"), outcome.exit_code)


def _resume(store: ProgressStore, job_id: str, root: Path, out_dir: Path, env: dict[str, str]) -> None:
    """A retry of a resumable pipeline: the previous attempt's folder copied into ``out_dir``,
    and named in the command's environment (``worker.resume``)."""
    try:
        snap = store.get(job_id)
    except ProgressError as exc:
        logger.warning("job %s: cannot read the job (%s): it does not resume", job_id, exc)
        return
    retry_of = snap.get("retry_of") if snap else None
    if retry_of and copy_previous_output(root / retry_of, out_dir, job_id):
        env[RESUME_FROM_ENV] = str(root / retry_of)


def _known_pipeline(store: ProgressStore, settings: Settings, job_id: str, name: str) -> Pipeline:
    """The pipeline ``name`` as this worker knows it, with the steps the job was created with.

    A submit is refused when the live workers do not know the pipeline
    (``progress_service.pipeline_workers``), but a job queued while no worker was live
    may meet one that does not: the job then fails, saying why, instead of running
    steps the store does not expect.
    """
    try:
        spec = get_pipeline(name, settings)
        snap = store.get(job_id)
        if snap is not None and snap["steps"] != list(spec.steps):
            raise ValueError(f"pipeline {name!r} has steps {list(spec.steps)} on this worker, but the "
                             f"job was submitted with {snap['steps']}: give the workers and the "
                             f"submitters the same PROGRESS_PIPELINES")
    except (ValueError, ConfigError) as exc:  # ConfigError: the worker's PROGRESS_PIPELINES broke
        error = f"worker {socket.gethostname()}: {exc}"
        _finish_in_store(job_id, Status.FAILED.value, error=error, store=store)
        store.close()
        raise PipelineFailed(markup_free(error), retryable=False) from None
    return spec


def _take_over_rq_alarm(timeout: float | None) -> float | None:
    """The runner's deadline; RQ's SIGALRM moved behind it as a backstop.

    RQ's UnixSignalDeathPenalty raises JobTimeoutException from a signal handler,
    wherever the main thread happens to be. The runner enforces the same timeout
    instead, killing the tree and writing "timed out after N s"; RQ's alarm is
    re-armed later, in case the runner itself hangs. Elsewhere (a thread, another
    death penalty) RQ's timeout stays as it is and the runner describes it.
    """
    if timeout is None or threading.current_thread() is not threading.main_thread():
        return None
    if not rq_owns_alarm():
        return None
    signal.alarm(int(timeout + KILL_GRACE + TIMEOUT_BACKSTOP))
    return timeout


def _child_env() -> dict[str, str]:
    """The command's environment: ours, unbuffered, with this code on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _RQMeta:
    """Copies what the throttle writes into the RQ job's meta, at the same rate."""

    def __init__(self, job: Job, tag: str) -> None:
        self.job = job
        self.tag = tag
        self.percent: float = 0
        self.step: str | None = None

    def on_start(self, pid: int) -> None:
        self.job.meta["pipeline_process"] = {"pid": pid, "pgid": pid, "host": socket.gethostname(),
                                             "tag": self.tag}
        self.job.save_meta()

    def on_write(self, fields: dict[str, Any], result: UpdateResult) -> None:
        if not result.accepted:
            return
        if "progress_percent" in fields:
            self.percent = fields["progress_percent"]
        if "current_step" in fields:
            self.step = fields["current_step"]
        if fields.get("status") == Status.COMPLETED.value:
            self.percent, self.step = 100, None
        progress = {"percent": self.percent, "step": self.step}
        if self.job.meta.get("progress") != progress:
            self.job.meta["progress"] = progress
            self.job.save_meta()


# -- RQ callbacks ---------------------------------------------------------------


def on_rq_failure(job: Job, connection, exc_type=None, exc_value=None, tb=None) -> None:
    """RQ's ``on_failure``: the store says ``failed`` too, if it does not say it already.

    RQ calls it when the job raised (a timeout included) and when its abandoned-job
    cleanup finds the job's worker dead (``AbandonedJobError``: ``worker lost``).
    """
    if exc_type is not None and issubclass(exc_type, JobCanceled):
        return  # the runner has written the store already; a cancel is not retried
    if exc_type is None or not issubclass(exc_type, PipelineFailed):  # else the runner has written it
        _fail_in_store(job, exc_type, exc_value)
    if getattr(exc_value, "retryable", True):
        _retry_if_due(job, connection, getattr(exc_value, "exit_code", None))


def _fail_in_store(job: Job, exc_type, exc_value) -> None:
    if exc_type is not None and issubclass(exc_type, AbandonedJobError):
        error = WORKER_LOST
        kill_orphaned_tree(job.meta.get("pipeline_process"), job.id)
    elif exc_type is not None and issubclass(exc_type, JobTimeoutException):
        error = f"timed out after {job.timeout:g} s" if job.timeout else "timed out"
    elif exc_type is not None:
        error = f"{exc_type.__name__}: {exc_value}"
    else:
        error = "failed in RQ"
    _finish_in_store(job.id, Status.FAILED.value, error=error)


def _retry_if_due(job: Job, connection, exit_code: int | None) -> None:
    """A failed job submitted with ``"retries"`` left (RQ's ``meta["retries"]``) runs again as a
    new attempt, after a backoff (``progress_service.retries.retry_failed``)."""
    retries = job.meta.get("retries") or 0
    if not isinstance(retries, int) or retries <= 0:
        return
    store = None
    try:
        settings = Settings.from_env()
        store = ProgressStore(connect(settings), settings)
        conn = connection if isinstance(connection, redis.Redis) else None
        retry_failed(settings, job.id, retries=retries, exit_code=exit_code, store=store, redis_conn=conn)
    except (ProgressError, ConfigError, redis.RedisError, OSError):
        logger.exception("job %s: could not retry it", job.id)
    finally:
        if store is not None:
            store.close()


def on_rq_stopped(job: Job, connection) -> None:
    """RQ's ``on_stopped`` (a stop command from anywhere): the store says ``canceled``."""
    _finish_in_store(job.id, Status.CANCELED.value, message="stopped in RQ")


def _finish_in_store(job_id: str, status: str, *, error: str | None = None,
                     message: str | None = None, store: ProgressStore | None = None) -> None:
    own = store is None
    try:
        if store is None:
            settings = Settings.from_env()
            store = ProgressStore(connect(settings), settings)
        result = store.update(job_id, status=status, error=error, message=message)
        if result.reason == "ok":
            logger.info("job %s: %s -> %s (%s)", job_id, Status.RUNNING.value, status, error or message)
    except (ProgressError, ConfigError, redis.RedisError, OSError):  # Redis away or refusing, bad settings
        logger.exception("job %s: could not mark the store %s", job_id, status)
    finally:
        if own and store is not None:
            store.close()


# -- the worker classes -----------------------------------------------------------


class _StopsCommands:
    """What RQ's workers lack: a stopped or killed job's command tree goes down too.

    The command runs in a session of its own, out of reach of RQ's ``killpg`` of the
    work horse's group: ``kill_horse`` kills it first (``on_kill_horse``, a hook of
    ``worker.rq_adapter``). The store learns why. A job that ended ``JobCanceled`` is
    recorded as RQ's ``stopped``, not ``failed``: the same ending whether RQ's stop
    command or the runner got there first.
    """

    progress_store: ProgressStore | None = None
    stopped_exceptions: tuple[type[BaseException], ...] = (JobCanceled,)

    def _mark_stopping(self, job_id: str | None) -> None:
        if job_id is None:
            return
        # a mixin: stop_requested comes from the rq_adapter class it is put before
        if self.stop_requested(job_id):  # type: ignore[attr-defined]
            _finish_in_store(job_id, Status.CANCELED.value, message="stopped in RQ",
                             store=self.progress_store)
        else:
            _finish_in_store(job_id, Status.FAILED.value,
                             error="work horse killed by its worker (cold shutdown or hard timeout)",
                             store=self.progress_store)


class ProgressWorker(_StopsCommands, HookedWorker):
    """RQ's forking Worker; a stopped job's command tree is killed with the work horse,
    and a work horse that dies on its own fails the job in the store."""

    def __init__(self, *args, store: ProgressStore | None = None, **kwargs) -> None:
        kwargs.setdefault("work_horse_killed_handler", self._horse_died)
        super().__init__(*args, **kwargs)
        self.progress_store = store

    def on_kill_horse(self, job_id: str | None, horse_pid: int | None) -> None:
        self._mark_stopping(job_id)
        if not horse_pid:
            return
        tag = self._command_tag(job_id)
        groups = {g for p in descendants(horse_pid) if (g := _pgid(p)) is not None and g != horse_pid}
        for pgid in sorted(groups):
            left = kill_process_tree(pgid, grace=STOP_GRACE, tag=tag)
            logger.info("worker %s: killed the command tree of group %d%s", self.name, pgid,
                        f" ({left} left)" if left else "")

    def _command_tag(self, job_id: str | None) -> str | None:
        """The tag the job's runner marked its command with (``meta["pipeline_process"]``)."""
        if job_id is None:
            return None
        try:
            job = Job.fetch(job_id, connection=self.connection)
        except (NoSuchJobError, redis.RedisError, OSError):  # gone, or RQ's Redis away: no tag to kill by
            return None
        return command_tag(job.meta.get("pipeline_process"))

    def _horse_died(self, job: Job, retpid, ret_val, rusage) -> None:
        try:
            meta = job.get_meta(refresh=True)
        except (redis.RedisError, OSError):  # RQ's Redis away: the meta it had will do
            meta = job.meta
        kill_orphaned_tree(meta.get("pipeline_process"), job.id)
        how = f"signal {os.WTERMSIG(ret_val)}" if ret_val and os.WIFSIGNALED(ret_val) else f"status {ret_val}"
        _finish_in_store(job.id, Status.FAILED.value,
                         error=f"work horse died unexpectedly ({how})", store=self.progress_store)
        _retry_if_due(job, self.connection, None)


class ProgressSimpleWorker(_StopsCommands, HookedSimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker's own process): a stop command marks
    the store ``canceled``, and the runner, watching, kills the command's tree."""

    def __init__(self, *args, store: ProgressStore | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress_store = store

    def on_kill_horse(self, job_id: str | None, horse_pid: int | None) -> None:
        self._mark_stopping(job_id)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
