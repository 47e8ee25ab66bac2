"""The RQ entry point: submit and cancel a job, the job function, and the worker classes.

    job_id = submit_job(settings, "34265844")             # pending in the store, queued in RQ
    snap = cancel_job(settings, job_id)                   # canceled, its process tree killed

One id for both sides: the RQ job id is the store's ``job_id``. The store is the
source of truth; RQ's job carries a copy of the progress in ``meta["progress"]``
(``{"percent", "step"}``) for the RQ dashboard, and where its command runs in
``meta["pipeline_process"]`` (``{"pid", "pgid", "host"}``).

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
========================  =====================================  ======================

The job timeout (``job_timeout``; ``PROGRESS_JOB_TIMEOUT``, default 3600 s) is
enforced by the runner, which kills the command's tree cleanly; RQ's own alarm
is moved ``TIMEOUT_BACKSTOP`` seconds later as a backstop, because an exception
raised by a signal handler into arbitrary code could be swallowed on its way.
Videos go to ``$PROGRESS_OUTPUT_DIR/<job_id>/`` (default: a folder in the temp dir).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import redis
from rq import Callback, Queue, SimpleWorker, Worker, get_current_job
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.timeouts import BaseDeathPenalty, JobTimeoutException
from rq.worker.base import SHUTDOWN_SIGNAL

from progress_service import ProgressStore, Settings, Status
from progress_service.batches import unfinished_members, validate_batch
from progress_service.errors import (
    BackendUnavailable,
    InvalidInput,
    JobConflict,
    JobNotFound,
)
from progress_service.models import validate_id
from progress_service.scripts import UpdateResult
from progress_service.store import connect
from worker.lost import WORKER_LOST, kill_orphaned_tree
from worker.pipelines import Pipeline, get_pipeline
from worker.process_tree import KILL_GRACE, descendants, kill_process_tree
from worker.runner import JOB_ID_ENV, run_command

logger = logging.getLogger(__name__)

__all__ = [
    "JobCanceled",
    "PipelineFailed",
    "ProgressSimpleWorker",
    "ProgressWorker",
    "cancel_batch",
    "cancel_job",
    "on_rq_failure",
    "on_rq_stopped",
    "output_root",
    "rq_connection",
    "run_pipeline",
    "submit_batch",
    "submit_job",
    "waiting_queue",
]

TIMEOUT_BACKSTOP = 30  # seconds RQ's own alarm waits beyond the runner's deadline and kill grace
STOP_GRACE = 2.0  # seconds a stopped job's command gets between SIGTERM and SIGKILL
_TERMINAL = frozenset(s.value for s in (Status.COMPLETED, Status.FAILED, Status.CANCELED))
_CANCELABLE_IN_RQ = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


class JobCanceled(Exception):
    """The job was canceled (or finished by someone else) while it ran."""


class PipelineFailed(Exception):
    """The pipeline's command failed; the message is the job's error (``markup_free``)."""


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


# -- connections and configuration ----------------------------------------------


def rq_connection(settings: Settings) -> redis.Redis:
    """A client for RQ's queue (bytes in, bytes out: RQ's own convention)."""
    return redis.Redis.from_url(settings.redis_url)


def _store(settings: Settings, store: ProgressStore | None) -> ProgressStore:
    return store if store is not None else ProgressStore(connect(settings), settings)


def output_root(settings: Settings) -> Path:
    """Where jobs write their output: ``PROGRESS_OUTPUT_DIR``, else <tmp>/progress-service/videos."""
    raw = settings.output_dir or os.path.join(tempfile.gettempdir(), "progress-service", "videos")
    return Path(raw).expanduser().resolve()


def _pipeline(name: object) -> Pipeline:
    validate_id(name, "pipeline")
    try:
        return get_pipeline(str(name))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


# -- submit and cancel ----------------------------------------------------------


def submit_job(
    settings: Settings,
    paper_id: str,
    pipeline: str = "video",
    *,
    job_id: str | None = None,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
    job_timeout: int | None = None,
    result_ttl: int | None = None,
    tags: list[str] | tuple[str, ...] = (),
    batch_id: str | None = None,
) -> str:
    """Create the job (``pending``, with the pipeline's steps) and queue it; return its id.

    The store's job exists before RQ's, so a status read never misses it. Raises
    ``InvalidInput`` for a bad id or an unknown pipeline, ``JobConflict`` if
    ``job_id`` is taken, ``BackendUnavailable`` if Redis does not answer (the job
    is then marked failed, if it was created). ``job_timeout`` defaults to
    ``PROGRESS_JOB_TIMEOUT`` (3600 s); RQ keeps the job's result and failure as
    long as the store keeps the job (``settings.job_ttl``) unless ``result_ttl``.
    """
    validate_id(paper_id, "paper_id")
    spec = _pipeline(pipeline)
    job_id = job_id if job_id is not None else uuid.uuid4().hex
    validate_id(job_id, "job_id")
    timeout = job_timeout if job_timeout is not None else settings.job_timeout
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
        raise InvalidInput(f"job_timeout must be a whole number of seconds >= 1, got {timeout!r}")
    ttl = result_ttl if result_ttl is not None else settings.job_ttl
    store = _store(settings, store)
    store.create_job(job_id, paper_id, steps=list(spec.steps), pipeline=spec.name,
                     tags=tags, batch_id=batch_id)
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    queue = Queue(settings.queue_name, connection=conn)
    try:
        queue.enqueue_call(
            run_pipeline,
            args=(paper_id, spec.name),
            job_id=job_id,
            timeout=timeout,
            result_ttl=ttl,
            failure_ttl=ttl,
            description=f"{spec.name} pipeline for paper {paper_id}",
            meta={"progress": {"percent": 0, "step": None}, "paper_id": paper_id,
                  "pipeline": spec.name},
            on_failure=Callback(on_rq_failure),
            on_stopped=Callback(on_rq_stopped),
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        error = f"could not queue the job: {exc}"
        try:
            store.update(job_id, status=Status.FAILED.value, error=error)
        except BackendUnavailable:
            pass
        raise BackendUnavailable(f"redis (RQ queue {settings.queue_name}): {exc}") from exc
    logger.info("job %s: queued on %s (%s pipeline, paper %s, timeout %ds)", job_id,
                settings.queue_name, spec.name, paper_id, timeout)
    return job_id


def submit_batch(
    settings: Settings,
    paper_ids: list[str],
    pipeline: str = "video",
    *,
    tags: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
) -> tuple[str, list[str]]:
    """Create a batch of one job per paper id (1 to 1,000) and queue them; return
    ``(batch_id, job_ids)``, the ids in the order of ``paper_ids``.

    All or nothing: every argument is checked before anything is written (a bad
    id anywhere raises ``InvalidInput``); if Redis fails halfway, the members made
    so far are canceled and the batch removed before ``BackendUnavailable`` is raised.
    """
    paper_ids, pipeline, tags, name = validate_batch(paper_ids, pipeline, tags, name)
    spec = _pipeline(pipeline)
    store = _store(settings, store)
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    batch_id = uuid.uuid4().hex
    job_ids = [uuid.uuid4().hex for _ in paper_ids]
    store.create_batch(batch_id, job_ids, spec.name, name=name, tags=tags)
    made: list[str] = []
    try:
        for job_id, paper_id in zip(job_ids, paper_ids, strict=True):
            submit_job(settings, paper_id, spec.name, job_id=job_id, store=store, redis_conn=conn,
                       tags=tags, batch_id=batch_id)
            made.append(job_id)
    except BaseException:
        logger.warning("batch %s: submit failed after %d of %d jobs; undoing it", batch_id,
                       len(made), len(job_ids))
        for job_id in made:
            try:
                cancel_job(settings, job_id, store=store, redis_conn=conn)
            except Exception as exc:  # Redis is likely why we are here: keep undoing
                logger.warning("job %s: not canceled after a failed batch submit: %s", job_id, exc)
        try:
            store.delete_batch(batch_id)
        except BackendUnavailable:
            pass
        raise
    logger.info("batch %s: %d jobs queued (%s pipeline)", batch_id, len(job_ids), spec.name)
    return batch_id, job_ids


def cancel_batch(
    settings: Settings,
    batch_id: str,
    *,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
) -> list[str]:
    """Cancel a batch: flag it canceled and cancel every member not yet finished.

    Returns the ids of the members canceled now; raises ``JobNotFound`` for an
    unknown batch (or one Redis has let go: it has finished).
    """
    validate_id(batch_id, "batch_id")
    store = _store(settings, store)
    state = store.batch_state(batch_id)
    if state is None or not store.mark_batch_canceled(batch_id):
        raise JobNotFound(f"batch {batch_id} not found")
    fields, members, _now = state
    job_ids = json.loads(fields["job_ids"])
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    canceled = []
    for job_id in unfinished_members(job_ids, members):
        try:
            cancel_job(settings, job_id, store=store, redis_conn=conn)
        except (JobConflict, JobNotFound):
            continue  # it finished meanwhile
        canceled.append(job_id)
    logger.info("batch %s: canceled (%d unfinished jobs canceled)", batch_id, len(canceled))
    return canceled


def cancel_job(
    settings: Settings,
    job_id: str,
    *,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
) -> dict[str, Any]:
    """Cancel a job and return its snapshot after.

    Queued: canceled in RQ (no worker will take it) and ``canceled`` in the store.
    Running: ``canceled`` in the store (the runner, watching, kills the process
    tree) and RQ's ``send_stop_job_command`` (the worker kills its work horse and,
    a ``ProgressWorker``, the command's tree with it). Raises ``JobNotFound`` for
    an unknown job and ``JobConflict`` for a finished one.
    """
    validate_id(job_id, "job_id")
    store = _store(settings, store)
    snap = store.get(job_id)
    if snap is None:
        raise JobNotFound(f"job {job_id} not found")
    if snap["status"] in _TERMINAL:
        raise JobConflict(f"job {job_id} has already finished ({snap['status']})")
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    rq_job = _fetch_rq_job(conn, job_id)
    rq_status = rq_job.get_status(refresh=False) if rq_job is not None else None
    if rq_job is not None and rq_status in _CANCELABLE_IN_RQ:
        try:
            rq_job.cancel()
        except InvalidJobOperation:
            pass  # canceled already
        rq_status = rq_job.get_status(refresh=True)
    result = store.update(job_id, status=Status.CANCELED.value, message="canceled by request")
    if result.reason == "terminal":
        final = store.get(job_id) or snap
        raise JobConflict(f"job {job_id} finished ({final['status']}) before it could be canceled")
    if result.reason == "not_found":
        raise JobNotFound(f"job {job_id} not found")
    logger.info("job %s: %s -> %s (canceled by request)", job_id, snap["status"], Status.CANCELED.value)
    if rq_job is not None and rq_status == JobStatus.STARTED:
        try:
            from rq.command import send_stop_job_command

            send_stop_job_command(conn, job_id)
        except (InvalidJobOperation, NoSuchJobError):
            pass  # not executing any more: the runner has seen the store
    return store.get(job_id) or snap


def _fetch_rq_job(conn, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return None


def waiting_queue(job_id: str, redis_conn: redis.Redis) -> dict[str, Any] | None:
    """Where a job waits for a worker: ``{"name": <its RQ queue>, "workers": <how many listen>}``.

    None when RQ holds no queued job of that id: a worker has taken it, it has
    ended, or it was never RQ's (``progress-service run``, a tracked job). The
    workers are RQ's own registry (``Worker.all(queue=...)``): a worker that stops
    leaves it at once; one killed outright stays until its key expires (RQ's
    worker TTL, minutes).
    """
    rq_job = _fetch_rq_job(redis_conn, job_id)
    if rq_job is None or rq_job.get_status(refresh=False) != JobStatus.QUEUED:
        return None
    queue = Queue(rq_job.origin, connection=redis_conn)
    return {"name": rq_job.origin, "workers": len(Worker.all(queue=queue))}


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
    spec = get_pipeline(pipeline)
    out_dir = output_root(settings) / job.id
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = job.timeout if job.timeout and job.timeout > 0 else None
    runner_timeout = _take_over_rq_alarm(timeout)
    meta = _RQMeta(job)

    def describe(exc: BaseException) -> str | None:
        if isinstance(exc, JobTimeoutException) and timeout:
            return f"timed out after {timeout:g} s"
        return None

    try:
        outcome = run_command(
            store, job.id, spec.command(paper_id, str(out_dir)), steps=spec.steps,
            weights=spec.weights, settings=settings, env=_child_env(), on_write=meta.on_write,
            on_start=meta.on_start, timeout=runner_timeout, describe_exception=describe,
        )
    finally:
        store.client.close()
    if outcome.status == Status.COMPLETED.value:
        return {"status": outcome.status, "result": outcome.result}
    if outcome.stopped_by == "timeout":
        raise JobTimeoutException(markup_free(outcome.error or f"timed out after {timeout} s"))
    if outcome.status == Status.CANCELED.value:
        raise JobCanceled(f"job {job.id} was canceled")
    raise PipelineFailed(markup_free(outcome.error or f"job {job.id} {outcome.status}"))


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
    handler = signal.getsignal(signal.SIGALRM)
    if not isinstance(getattr(handler, "__self__", None), BaseDeathPenalty):
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

    def __init__(self, job: Job) -> None:
        self.job = job
        self.percent: float = 0
        self.step: str | None = None

    def on_start(self, pid: int) -> None:
        self.job.meta["pipeline_process"] = {"pid": pid, "pgid": pid, "host": socket.gethostname()}
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
    if exc_type is not None and issubclass(exc_type, JobCanceled | PipelineFailed):
        return  # the runner has written the store already
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
    except Exception:
        logger.exception("job %s: could not mark the store %s", job_id, status)
    finally:
        if own and store is not None:
            store.client.close()


# -- the worker classes -----------------------------------------------------------


class _StopsCommands:
    """What RQ's workers lack: a stopped or killed job's command tree goes down too.

    The command runs in a session of its own, out of reach of RQ's ``killpg`` of the
    work horse's group: ``kill_horse`` kills it first. The store learns why.
    """

    progress_store: ProgressStore | None = None

    def handle_exception(self, job: Job, *exc_info) -> None:
        """A job that ended ``JobCanceled`` is recorded as RQ's ``stopped``, not ``failed``:
        the same ending whether RQ's stop command or the runner got there first."""
        if exc_info and isinstance(exc_info[0], type) and issubclass(exc_info[0], JobCanceled):
            self._stopped_job_id = job.id  # type: ignore[attr-defined]
            logger.info("job %s: canceled; RQ records it as stopped", job.id)
            return
        super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def _mark_stopping(self) -> None:
        job_id = self.get_current_job_id()  # type: ignore[attr-defined]
        if job_id is None:
            return
        if self._stopped_job_id == job_id:  # type: ignore[attr-defined]
            _finish_in_store(job_id, Status.CANCELED.value, message="stopped in RQ",
                             store=self.progress_store)
        else:
            _finish_in_store(job_id, Status.FAILED.value,
                             error="work horse killed by its worker (cold shutdown or hard timeout)",
                             store=self.progress_store)


class ProgressWorker(_StopsCommands, Worker):
    """RQ's forking Worker; a stopped job's command tree is killed with the work horse,
    and a work horse that dies on its own fails the job in the store."""

    def __init__(self, *args, store: ProgressStore | None = None, **kwargs) -> None:
        kwargs.setdefault("work_horse_killed_handler", self._horse_died)
        super().__init__(*args, **kwargs)
        self.progress_store = store

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        horse = self.horse_pid
        if not horse:
            return
        job_id = self.get_current_job_id()  # type: ignore[attr-defined]
        tag = f"{JOB_ID_ENV}={job_id}" if job_id else None
        self._mark_stopping()
        groups = {_pgid(p) for p in descendants(horse)} - {horse, None}
        for pgid in sorted(groups):  # type: ignore[type-var]
            left = kill_process_tree(pgid, grace=STOP_GRACE, tag=tag)
            logger.info("worker %s: killed the command tree of group %d%s", self.name, pgid,
                        f" ({left} left)" if left else "")
        # RQ's kill_horse signals os.getpgid(self.horse_pid): once the horse has ended,
        # horse_pid is 0 and that is this worker's own group. Signal the horse's group
        # (it called setpgrp: the group is its pid) only while it is still ours.
        if self.horse_pid != horse:
            return
        try:
            os.killpg(horse, sig)
            logger.info("worker %s: killed horse pid %d", self.name, horse)
        except ProcessLookupError:
            pass

    def _horse_died(self, job: Job, retpid, ret_val, rusage) -> None:
        try:
            meta = job.get_meta(refresh=True)
        except Exception:
            meta = job.meta
        kill_orphaned_tree(meta.get("pipeline_process"), job.id)
        how = f"signal {os.WTERMSIG(ret_val)}" if ret_val and os.WIFSIGNALED(ret_val) else f"status {ret_val}"
        _finish_in_store(job.id, Status.FAILED.value,
                         error=f"work horse died unexpectedly ({how})", store=self.progress_store)


class ProgressSimpleWorker(_StopsCommands, SimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker's own process): a stop command marks
    the store ``canceled``, and the runner, watching, kills the command's tree."""

    def __init__(self, *args, store: ProgressStore | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress_store = store

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        self._mark_stopping()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None

