"""The queue: submit a job to RQ and cancel one, from any process that reaches Redis.

    job_id = submit_job(settings, "34265844")             # pending in the store, queued in RQ
    snap = cancel_job(settings, job_id)                   # canceled, its process tree killed

One id for both sides: the RQ job id is the store's ``job_id``. The job function
and its callbacks are named by their dotted path (``worker.jobs.run_pipeline``),
as RQ allows: the worker imports them, a producer or the web never does. How the
store and RQ agree as the job runs and ends is told in ``worker.jobs``.

RQ is imported inside the functions, so ``import progress_service`` costs nothing
in a process that only reports progress.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis

from .batches import unfinished_members, validate_batch
from .config import Settings
from .errors import BackendUnavailable, InvalidInput, JobConflict, JobNotFound
from .eta import QueuePlace
from .models import TERMINAL_VALUES, Status, validate_id
from .pipeline_workers import check_workers_know
from .pipelines import Pipeline, require_pipeline
from .store import ProgressStore

if TYPE_CHECKING:
    from rq.job import Job

logger = logging.getLogger(__name__)

__all__ = ["FAILURE_CALLBACK", "JOB_FUNCTION", "MAX_RETRIES", "STOPPED_CALLBACK", "Attempt", "RQQueueProbe",
           "cancel_batch", "cancel_job", "queue_depth", "queue_probe", "rq_connection", "submit_batch",
           "submit_job", "validate_retries", "waiting_queue"]

# What the worker runs, by name (worker/jobs.py).
JOB_FUNCTION = "worker.jobs.run_pipeline"
FAILURE_CALLBACK = "worker.jobs.on_rq_failure"
STOPPED_CALLBACK = "worker.jobs.on_rq_stopped"

MAX_RETRIES = 10  # "retries" at submit: 0 to this
MAX_DELAY = 24 * 3600  # the longest wait before a job is queued (a retry's backoff)


def validate_retries(retries: object) -> int:
    """``retries`` if it is a whole number from 0 to ``MAX_RETRIES``, else ``InvalidInput``."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise InvalidInput(f"retries must be a whole number from 0 to {MAX_RETRIES}, got {retries!r}")
    return retries


@dataclass(frozen=True)
class Attempt:
    """A job that retries another: its number (2 or more), the job it retries, and where it
    starts (a resumable pipeline's retry: the steps done before, their share of the bar, and
    a message saying so)."""

    number: int
    retry_of: str
    steps_done: int = 0
    progress_percent: float = 0
    message: str | None = None

    def create_args(self) -> dict[str, Any]:
        """``ProgressStore.create_job``'s keywords for this attempt."""
        return {"attempt": self.number, "retry_of": self.retry_of, "steps_done": self.steps_done,
                "progress_percent": self.progress_percent, "message": self.message}


def rq_connection(settings: Settings) -> redis.Redis:
    """A client for RQ's queue (bytes in, bytes out: RQ's own convention)."""
    return redis.Redis.from_url(settings.redis_url)


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
    tags: Sequence[str] = (),
    batch_id: str | None = None,
    retries: int = 0,
    attempt: Attempt | None = None,
    delay: float = 0.0,
) -> str:
    """Create the job (``pending``, with the pipeline's steps) and queue it; return its id.

    ``retries`` (0 to ``MAX_RETRIES``): how many times a failure is retried automatically,
    each a new job (``progress_service.retries``). ``attempt``: this job is a retry (its
    number, the job it retries, the steps it starts with done). ``delay``: seconds before
    a worker may take it (RQ's scheduler queues it then; ``progress-service worker`` runs one).

    The store's job exists before RQ's, so a status read never misses it. Raises
    ``InvalidInput`` for a bad id, a pipeline this process does not know, or one the
    live workers of the queue do not all know with the same steps
    (``pipeline_workers.check_workers_know``; with no live worker the job waits in the
    queue); ``JobConflict`` if ``job_id`` is taken, ``BackendUnavailable`` if Redis
    does not answer (the job is then marked failed, if it was created), ``ConfigError``
    if ``PROGRESS_PIPELINES`` or an entry point is broken. ``job_timeout`` defaults to
    the pipeline's own, else ``PROGRESS_JOB_TIMEOUT`` (3600 s); RQ keeps the job's
    result and failure as long as the store keeps the job (``settings.job_ttl``)
    unless ``result_ttl``.
    """
    validate_id(paper_id, "paper_id")
    spec = require_pipeline(pipeline, settings)
    validate_retries(retries)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY:
        raise InvalidInput(f"delay must be a number of seconds from 0 to {MAX_DELAY}, got {delay!r}")
    job_id = job_id if job_id is not None else uuid.uuid4().hex
    validate_id(job_id, "job_id")
    timeout = job_timeout if job_timeout is not None else spec.timeout or settings.job_timeout
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
        raise InvalidInput(f"job_timeout must be a whole number of seconds >= 1, got {timeout!r}")
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    check_workers_know(conn, settings, spec)
    store = store if store is not None else ProgressStore.from_settings(settings)
    ttl = result_ttl if result_ttl is not None else settings.job_ttl
    return _create_and_queue(settings, spec, paper_id, job_id, store=store, conn=conn, timeout=timeout,
                             ttl=ttl, tags=tags, batch_id=batch_id, retries=retries, attempt=attempt,
                             delay=delay)


def _create_and_queue(settings: Settings, spec: Pipeline, paper_id: str, job_id: str, *,
                      store: ProgressStore, conn: redis.Redis, timeout: int, ttl: int,
                      tags: Sequence[str], batch_id: str | None, retries: int = 0,
                      attempt: Attempt | None = None, delay: float = 0.0) -> str:
    """``submit_job``'s writes, its arguments checked."""
    from rq import Callback, Queue

    store.create_job(job_id, paper_id, steps=list(spec.steps), pipeline=spec.name,
                     tags=tags, batch_id=batch_id, **(attempt.create_args() if attempt else {}))
    queue = Queue(settings.queue_name, connection=conn)
    number = attempt.number if attempt else 1
    options: dict[str, Any] = dict(
        args=(paper_id, spec.name),
        job_id=job_id,
        result_ttl=ttl,
        failure_ttl=ttl,
        description=f"{spec.name} pipeline for paper {paper_id}"
                    + (f" (attempt {number})" if number > 1 else ""),
        meta={"progress": {"percent": 0, "step": None}, "paper_id": paper_id,
              "pipeline": spec.name, "retries": retries},
        on_failure=Callback(FAILURE_CALLBACK),
        on_stopped=Callback(STOPPED_CALLBACK),
    )
    try:
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), JOB_FUNCTION, job_timeout=timeout, **options)
        else:
            queue.enqueue_call(JOB_FUNCTION, timeout=timeout, **options)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        error = f"could not queue the job: {exc}"
        with suppress(BackendUnavailable):  # Redis is away altogether: the error below says so
            store.update(job_id, status=Status.FAILED.value, error=error)
        raise BackendUnavailable(f"redis (RQ queue {settings.queue_name}): {exc}") from exc
    logger.info("job %s: queued on %s (%s pipeline, paper %s, timeout %ds%s%s)", job_id,
                settings.queue_name, spec.name, paper_id, timeout,
                f", attempt {number}" if number > 1 else "", f", in {delay:g} s" if delay > 0 else "")
    return job_id


def submit_batch(
    settings: Settings,
    paper_ids: list[str],
    pipeline: str = "video",
    *,
    tags: Sequence[str] = (),
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
    spec = require_pipeline(pipeline, settings)
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    check_workers_know(conn, settings, spec)  # once for the batch
    store = store if store is not None else ProgressStore.from_settings(settings)
    timeout = spec.timeout or settings.job_timeout
    batch_id = uuid.uuid4().hex
    job_ids = [uuid.uuid4().hex for _ in paper_ids]
    store.create_batch(batch_id, job_ids, spec.name, name=name, tags=tags)
    made: list[str] = []
    try:
        for job_id, paper_id in zip(job_ids, paper_ids, strict=True):
            _create_and_queue(settings, spec, paper_id, job_id, store=store, conn=conn,
                              timeout=timeout, ttl=settings.job_ttl, tags=tags, batch_id=batch_id)
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
    store = store if store is not None else ProgressStore.from_settings(settings)
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
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import JobStatus

    validate_id(job_id, "job_id")
    store = store if store is not None else ProgressStore.from_settings(settings)
    snap = store.get(job_id)
    if snap is None:
        raise JobNotFound(f"job {job_id} not found")
    if snap["status"] in TERMINAL_VALUES:
        raise JobConflict(f"job {job_id} has already finished ({snap['status']})")
    conn = redis_conn if redis_conn is not None else rq_connection(settings)
    rq_job = _fetch_rq_job(conn, job_id)
    rq_status = rq_job.get_status(refresh=False) if rq_job is not None else None
    if rq_job is not None and rq_status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        with suppress(InvalidJobOperation):  # canceled already
            rq_job.cancel()
        rq_status = rq_job.get_status(refresh=True)
    result = store.update(job_id, status=Status.CANCELED.value, message="canceled by request")
    if result.reason == "terminal":
        final = store.get(job_id) or snap
        raise JobConflict(f"job {job_id} finished ({final['status']}) before it could be canceled")
    if result.reason == "not_found":
        raise JobNotFound(f"job {job_id} not found")
    logger.info("job %s: %s -> %s (canceled by request)", job_id, snap["status"], Status.CANCELED.value)
    if rq_job is not None and rq_status == JobStatus.STARTED:
        with suppress(InvalidJobOperation, NoSuchJobError):  # not executing any more: the runner has seen the store
            send_stop_job_command(conn, job_id)
    return store.get(job_id) or snap


def _fetch_rq_job(conn: redis.Redis, job_id: str) -> Job | None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

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
    from rq import Queue, Worker
    from rq.job import JobStatus

    rq_job = _fetch_rq_job(redis_conn, job_id)
    if rq_job is None or rq_job.get_status(refresh=False) != JobStatus.QUEUED:
        return None
    queue = Queue(rq_job.origin, connection=redis_conn)
    return {"name": rq_job.origin, "workers": len(Worker.all(queue=queue))}


def queue_depth(settings: Settings, redis_conn: redis.Redis) -> int:
    """How many jobs wait in the RQ queue (``settings.queue_name``) for a worker."""
    from rq import Queue

    return int(Queue(settings.queue_name, connection=redis_conn).count)


class RQQueueProbe:
    """Where pending jobs wait in the RQ queue ``settings.queue_name`` (the store's
    ``queue_probe``, for a pending job's ETA): how many jobs are ahead of each
    (``Queue.get_job_position``, LPOS) and how many workers listen (``Worker.count``).
    A job the queue does not hold (taken by a worker, or never RQ's) is left out."""

    def __init__(self, settings: Settings, redis_conn: redis.Redis | None = None) -> None:
        self.settings = settings
        self._conn = redis_conn
        self._queue: Any = None

    def places(self, job_ids: Sequence[str]) -> dict[str, QueuePlace]:
        from rq import Queue, Worker

        if self._queue is None:
            conn = self._conn if self._conn is not None else rq_connection(self.settings)
            self._queue = Queue(self.settings.queue_name, connection=conn)
        out = {}
        for job_id in job_ids:
            ahead = self._queue.get_job_position(job_id)
            if ahead is not None:
                out[job_id] = ahead
        if not out:
            return {}
        workers = Worker.count(queue=self._queue)
        return {job_id: QueuePlace(ahead, workers) for job_id, ahead in out.items()}


def queue_probe(settings: Settings, redis_conn: redis.Redis | None = None) -> RQQueueProbe | None:
    """An :class:`RQQueueProbe`, or None where RQ is not installed (a producer's install)."""
    try:
        import rq  # noqa: F401
    except ImportError:
        return None
    return RQQueueProbe(settings, redis_conn)
