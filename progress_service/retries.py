"""Retries: a failed or canceled job runs again as a new job, ``attempt`` + 1.

    new_id = retry_job(settings, job_id)                  # by request: POST .../retry, progress-service retry
    retry_failed(settings, job_id, retries=2, delay=10)   # the worker: a failure with retries left

A retry is a job of its own (its own id, history and row in PostgreSQL) with the old job's
paper, pipeline and tags, ``attempt`` one more and ``retry_of`` the old job's id; it is
queued at once, or after ``delay`` seconds (an automatic retry's backoff). A job is retried
once: a second request is a conflict naming the retry (``ProgressStore.claim_retry``).

Where the pipeline is ``resumable``, the retry resumes: it is created with the steps the old
job completed done (its bar at their share, ``Pipeline.start_percent``, and its first history
entry saying which and by which attempt), and the worker starts its command in a copy of the
old job's output folder, where the command finds their output and skips them
(``worker.resume``). A resumable command that finds an output missing or broken runs its
step again: the bar waits at the preset share meanwhile (it never moves back).

Automatic retries (``"retries": N`` at submit, ``--retries N``): a job that fails with
retries left is retried by its worker after ``backoff_seconds(attempt)``, with one retry
fewer; a canceled job is not, nor one whose command said its input is bad (it exited
``NO_RETRY_EXIT_CODES``: 2 or 64, a usage error; 65, bad input data).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis

from .config import Settings
from .errors import BackendUnavailable, InvalidInput, JobConflict, JobNotFound
from .models import MAX_ATTEMPT, Status, validate_id
from .pipelines import Pipeline, require_pipeline
from .queue import MAX_RETRIES, Attempt, submit_job, validate_retries
from .store import ProgressStore

logger = logging.getLogger(__name__)

__all__ = ["BACKOFF_MAX", "NO_RETRY_EXIT_CODES", "RETRYABLE", "backoff_seconds", "resume_point",
           "retry_failed", "retry_job"]

RETRYABLE = frozenset({Status.FAILED.value, Status.CANCELED.value})  # what a request may retry
NO_RETRY_EXIT_CODES = frozenset({2, 64, 65})  # argparse's usage error, EX_USAGE, EX_DATAERR
BACKOFF_MAX = 3600.0  # the longest wait before an automatic retry, seconds

Finder = Callable[[str], dict[str, Any] | None]


def backoff_seconds(attempt: int, base: float) -> float:
    """How long an automatic retry of failed attempt ``attempt`` waits: ``base`` doubled for
    each attempt before it (``base``, 2 ``base``, 4 ``base``...), at most ``BACKOFF_MAX``."""
    return float(min(base * 2 ** max(attempt - 1, 0), BACKOFF_MAX))


def resume_point(spec: Pipeline, old: dict[str, Any]) -> tuple[int, float, str | None]:
    """Where a retry of ``old`` starts: (steps done, percent, message). A pipeline that is
    not resumable, or steps that differ from the pipeline's now, start from the beginning."""
    done = list(old.get("completed_steps") or [])
    if not spec.resumable or not done or list(old.get("steps") or []) != list(spec.steps):
        return 0, 0.0, None
    done = done[: len(spec.steps) - 1]  # a retry has a step left to run
    attempt = int(old.get("attempt") or 1)
    message = f"skipped {', '.join(done)} (done by attempt {attempt})"
    return len(done), spec.start_percent(len(done)), message


def retry_job(
    settings: Settings,
    job_id: str,
    *,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
    find: Finder | None = None,
    retries: int = 0,
    delay: float = 0.0,
) -> str:
    """Create and queue a new attempt of failed or canceled job ``job_id``; return its id.

    ``find`` reads a job Redis has let go (the web's and the CLI's reach PostgreSQL);
    by default only Redis is asked. Raises ``JobNotFound`` for a job neither knows,
    ``JobConflict`` for one that has not failed or been canceled, or that has been retried
    already (the message names its retry), or whose pipeline no worker runs (a tracked job,
    a pipeline since removed), ``InvalidInput`` for a bad id, ``BackendUnavailable`` when
    Redis does not answer.
    """
    validate_id(job_id, "job_id")
    validate_retries(retries)
    store = store if store is not None else ProgressStore.from_settings(settings)
    old = store.get(job_id)
    if old is None and find is not None:
        old = find(job_id)
    if old is None:
        raise JobNotFound(f"job {job_id} not found")
    if old["status"] not in RETRYABLE:
        raise JobConflict(f"job {job_id} is {old['status']}: only a failed or canceled job can be retried")
    number = int(old.get("attempt") or 1) + 1
    if number > MAX_ATTEMPT:
        raise JobConflict(f"job {job_id} is attempt {number - 1}: no more attempts")
    try:
        spec = require_pipeline(old["pipeline"], settings)
    except InvalidInput as exc:  # a tracked job (no worker runs it), or a pipeline since removed
        raise JobConflict(f"job {job_id} cannot be queued again: {exc}") from None
    steps_done, percent, message = resume_point(spec, old)
    if delay > 0:
        wait = f"starts in {delay:g} s"
        message = f"{wait}; {message}" if message else wait
    new_id = uuid.uuid4().hex
    taken = store.claim_retry(job_id, new_id)
    if taken is not None:
        raise JobConflict(f"job {job_id} has been retried already: job {taken}")
    try:
        submit_job(settings, old["paper_id"], spec.name, job_id=new_id, store=store, redis_conn=redis_conn,
                   tags=old.get("tags") or (), retries=retries, delay=delay,
                   attempt=Attempt(number, job_id, steps_done, percent, message))
    except (InvalidInput, BackendUnavailable, JobConflict):
        try:
            store.release_retry(job_id, new_id)
        except BackendUnavailable:
            pass
        raise
    logger.info("job %s: retried as job %s (attempt %d%s%s)", job_id, new_id, number,
                f", resuming after {steps_done} steps" if steps_done else "",
                f", in {delay:g} s" if delay > 0 else "")
    return new_id


def retry_failed(
    settings: Settings,
    job_id: str,
    *,
    retries: int,
    exit_code: int | None = None,
    store: ProgressStore | None = None,
    redis_conn: redis.Redis | None = None,
) -> str | None:
    """An automatic retry of ``job_id``, which has just failed with ``retries`` retries left:
    the new job's id, or None when none is due (no retries left, the job did not fail, its
    command refused its input, or it has been retried already). Waits
    ``backoff_seconds(attempt, settings.retry_backoff)`` before the new attempt is queued."""
    if retries <= 0 or (exit_code is not None and exit_code in NO_RETRY_EXIT_CODES):
        return None
    store = store if store is not None else ProgressStore.from_settings(settings)
    snap = store.get(job_id)
    if snap is None or snap["status"] != Status.FAILED.value:
        return None
    delay = backoff_seconds(int(snap.get("attempt") or 1), settings.retry_backoff)
    try:
        return retry_job(settings, job_id, store=store, redis_conn=redis_conn,
                         retries=min(retries - 1, MAX_RETRIES), delay=delay)
    except JobConflict as exc:
        logger.info("job %s: no automatic retry: %s", job_id, exc)
        return None
