"""Every touch of RQ's non-public API, in one module.

RQ's public API (``Queue``, ``Job``, ``Worker``, ``SimpleWorker``, ``Callback``,
``get_current_job``, ``send_stop_job_command``, the registries' ``get_job_ids``,
``work_horse_killed_handler``, its exceptions and ``JobTimeoutException``) is used
wherever it is needed. What RQ does not promise is used here only, each touch
with a comment (``RQ:``) saying what it relies on:

- ``SHUTDOWN_SIGNAL``, the signal RQ's ``kill_horse`` sends by default;
- the worker's private ``_stopped_job_id``, read and written;
- two overridden worker methods, ``handle_exception`` and ``kill_horse``, and when
  RQ calls them; ``horse_pid`` going to 0 when the work horse ends;
- the SIGALRM handler of RQ's ``UnixSignalDeathPenalty``;
- the worker-less failure path (``rq.job_lifecycle``) and the started registry's
  entry format, to fail a job whose worker died.

RQ range: rq >= 3.0, < 4 (CI tests 3.0.0). ``rq.job_lifecycle`` first appears in
3.0 and ``rq.worker.base`` in 2.9; ``_stopped_job_id`` and the registry's
``<job_id>:<execution_id>`` entries are older. When RQ changes one of these, this
file changes, and the tests of worker/jobs.py and worker/lost.py say so.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import suppress
from typing import Any

from rq import SimpleWorker, Worker
from rq.job import Job
from rq.timeouts import BaseDeathPenalty

# RQ: the default signal of ``kill_horse`` lives in rq.worker.base (a module, not rq's
# public namespace) since 2.9; SIGKILL where the platform has it. BaseWorker, the base of
# Worker and SimpleWorker there, is only the base of _Hooks, for the type checker.
from rq.worker.base import SHUTDOWN_SIGNAL, BaseWorker

logger = logging.getLogger(__name__)

__all__ = [
    "SHUTDOWN_SIGNAL",
    "HookedSimpleWorker",
    "HookedWorker",
    "fail_started_job",
    "rq_owns_alarm",
]


class _Hooks(BaseWorker):
    """What both hooked worker classes share: stop requests, and exceptions that mean "stopped".

    A mixin put before Worker or SimpleWorker; derived from their BaseWorker so that
    mypy knows the worker it extends (its ``_stopped_job_id``, ``handle_exception``).
    """

    # Exceptions that end a job as RQ's ``stopped`` rather than ``failed``.
    stopped_exceptions: tuple[type[BaseException], ...] = ()

    def stop_requested(self, job_id: str | None) -> bool:
        """Whether RQ is stopping ``job_id`` on request (a stop command, or a stopped exception)."""
        # RQ: ``request_stop_execution`` (a stop command) sets ``_stopped_job_id`` to the job's
        # id before it calls ``kill_horse``; ``handle_job_failure`` clears it.
        return job_id is not None and getattr(self, "_stopped_job_id", None) == job_id

    def on_kill_horse(self, job_id: str | None, horse_pid: int | None) -> None:
        """Called before RQ's work horse is killed (stop command, cold shutdown, hard timeout)."""

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """A job that raised one of ``stopped_exceptions`` is recorded as RQ's ``stopped``."""
        if exc_info and isinstance(exc_info[0], type) and issubclass(exc_info[0], self.stopped_exceptions):
            # RQ: ``handle_exception`` runs in the process that ran the job, after the failure
            # callback and before ``handle_job_failure``, which records STOPPED (and no retry)
            # instead of FAILED when ``_stopped_job_id`` is the job's id.
            self._stopped_job_id = job.id
            logger.info("job %s: %s; RQ records it as stopped", job.id, exc_info[0].__name__)
            return
        super().handle_exception(job, *exc_info)


class HookedWorker(_Hooks, Worker):
    """RQ's forking Worker; ``on_kill_horse`` runs before the work horse's group is killed."""

    # RQ: ``kill_horse`` is called by ``request_stop_execution`` (stop command),
    # ``request_force_stop`` (cold shutdown) and the horse monitor (hard timeout); ``horse_pid``
    # is 0 once the horse has ended, and the horse called ``os.setpgrp()`` (its group is its pid).
    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        horse = self.horse_pid
        if not horse:
            return
        self.on_kill_horse(self.get_current_job_id(), horse)
        # RQ's own kill_horse signals os.getpgid(self.horse_pid): once the horse has ended,
        # horse_pid is 0 and that is this worker's own group. Signal the horse's group
        # (its pid) only while it is still ours.
        if self.horse_pid != horse:
            return
        with suppress(ProcessLookupError):  # the horse has ended by itself
            os.killpg(horse, sig)
            logger.info("worker %s: killed horse pid %d", self.name, horse)


class HookedSimpleWorker(_Hooks, SimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker's own process); ``on_kill_horse`` is all its
    ``kill_horse`` does, there being no horse."""

    # RQ: as HookedWorker.kill_horse; SimpleWorker's own is a no-op.
    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        self.on_kill_horse(self.get_current_job_id(), None)


def rq_owns_alarm() -> bool:
    """Whether SIGALRM is RQ's job timeout (so it can be re-armed later as a backstop)."""
    # RQ: UnixSignalDeathPenalty.setup_death_penalty installs its own bound method
    # (handle_death_penalty) as the SIGALRM handler and arms signal.alarm.
    handler = signal.getsignal(signal.SIGALRM)
    return isinstance(getattr(handler, "__self__", None), BaseDeathPenalty)


def fail_started_job(connection: Any, job: Job, exc_string: str) -> None:
    """Move a ``started`` job to RQ's FailedJobRegistry, as RQ's abandoned-job cleanup does."""
    # RQ: the worker-less failure path of 3.0 (synchronous jobs, abandoned-job cleanup): sets
    # FAILED, adds the job to the FailedJobRegistry, saves a failure Result; runs no callback.
    from rq.job_lifecycle import record_job_failure

    registry = job.started_job_registry
    # RQ: the started registry's members are "<job_id>:<execution_id>"; get_job_and_execution_ids
    # splits them back, and cleanup=False leaves RQ's own cleanup (and its callbacks) alone.
    entries = [f"{j}:{e}" for j, e in registry.get_job_and_execution_ids(cleanup=False) if j == job.id]
    with connection.pipeline() as pipe:
        if entries:
            pipe.zrem(registry.key, *entries)
        record_job_failure(job, exc_string, pipe)
        pipe.execute()
