"""Jobs whose worker died: found by their heartbeat, failed as ``worker lost``.

A running job's runner stamps ``heartbeat_at`` every few seconds
(``Settings.heartbeat_interval``). When the worker and its work horse are
killed (SIGKILL, a lost machine), nothing stamps it any more: the job first reads
``is_stale`` (its progress stopped), and once its last heartbeat (or its start, if
it never had one) is older than ``settings.worker_lost_after`` seconds on the
Redis clock, any ``progress-service worker`` process's sweeper fails it:

    store.update(job_id, status="failed", error="worker lost")

The RQ job is made to agree at once: if RQ still shows it ``started``, it is moved
to RQ's FailedJobRegistry the way RQ's own abandoned-job cleanup would (which
only happens after the execution's heartbeat TTL, ~90 s, and the next maintenance
pass, up to 10 min later). When RQ's cleanup gets there first, the job's
``on_failure`` callback (``worker.jobs.on_rq_failure``) writes the same
``worker lost`` to the store: whichever runs first wins, the other changes nothing.

If the dead job's process tree survived on this host (the pipeline runs in a
session of its own, so a SIGKILL of the work horse does not reach it), it is
killed too: the processes that carry the run's ``PROGRESS_JOB_TAG`` (recorded in
the RQ job's ``meta["pipeline_process"]``) in their environment, and no other. Not
the job id: another deployment on the machine may run a job of the same id.

A lost job submitted with ``"retries"`` left (RQ's ``meta["retries"]``) is retried like
any failure (``progress_service.retries.retry_failed``): a new attempt, after a backoff.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from progress_service import ProgressStore, Settings, Status
from progress_service.errors import BackendUnavailable
from progress_service.models import ID_PATTERN, ms_from_iso
from progress_service.retries import retry_failed
from worker.process_tree import (
    KILL_GRACE,
    environ_has,
    group_members,
    kill_process_tree,
    process_alive,
    tagged_processes,
)
from worker.runner import is_job_tag

logger = logging.getLogger(__name__)

__all__ = [
    "WORKER_LOST",
    "LostJobSweeper",
    "command_tag",
    "fail_rq_job",
    "find_lost_jobs",
    "kill_orphaned_tree",
    "sweep_interval",
    "sweep_lost_jobs",
]

WORKER_LOST = "worker lost"
SCAN_LIMIT = 50  # running jobs looked for among the newest 10x as many (besides RQ's started ones)


def sweep_interval(settings: Settings) -> float:
    """Seconds between two sweeps: a quarter of ``worker_lost_after``, within 0.2..5."""
    return max(0.2, min(5.0, settings.worker_lost_after / 4))


def last_sign_of_life_ms(snap: dict[str, Any]) -> int | None:
    """The job's last heartbeat, else its start, else its creation (ms, Redis clock)."""
    for name in ("heartbeat_at", "started_at", "created_at"):
        ms = ms_from_iso(snap.get(name))
        if ms is not None:
            return ms
    return None


def _candidate_ids(store: ProgressStore, rq_connection, queue_names, scan_limit: int) -> list[str]:
    ids: dict[str, None] = {}
    if rq_connection is not None:
        from rq.registry import StartedJobRegistry

        for name in queue_names:
            registry = StartedJobRegistry(name, connection=rq_connection)
            for job_id in registry.get_job_ids(cleanup=False):
                if ID_PATTERN.match(job_id):  # another application's RQ job: not ours
                    ids[job_id] = None
    if scan_limit > 0:
        for snap in store.list_jobs(status=Status.RUNNING.value, limit=scan_limit):
            ids[snap["job_id"]] = None
    return list(ids)


def find_lost_jobs(
    store: ProgressStore,
    settings: Settings,
    *,
    rq_connection=None,
    queue_names: tuple[str, ...] | list[str] = (),
    scan_limit: int = SCAN_LIMIT,
) -> list[tuple[dict[str, Any], float]]:
    """Running jobs silent for longer than ``worker_lost_after``: [(snapshot, silent seconds)].

    Looks at the jobs RQ's StartedJobRegistry holds for ``queue_names`` and at the
    running ones among the newest ``scan_limit * 10`` jobs of the store (which
    finds jobs no queue knows, such as those of ``progress-service run``).
    """
    ids = _candidate_ids(store, rq_connection, queue_names, scan_limit)
    if not ids:
        return []
    snaps = store.get_many(ids)
    now_ms = store.server_time_ms()
    limit_ms = settings.worker_lost_after * 1000
    lost = []
    for snap in snaps:
        if snap["status"] != Status.RUNNING.value:
            continue
        last = last_sign_of_life_ms(snap)
        if last is not None and now_ms - last > limit_ms:
            lost.append((snap, (now_ms - last) / 1000))
    return lost


def sweep_lost_jobs(
    store: ProgressStore,
    settings: Settings,
    *,
    rq_connection=None,
    queue_names: tuple[str, ...] | list[str] = (),
    scan_limit: int = SCAN_LIMIT,
) -> list[str]:
    """Fail every lost job (see the module docstring); return the ids this call failed."""
    failed = []
    for snap, silent in find_lost_jobs(store, settings, rq_connection=rq_connection,
                                       queue_names=queue_names, scan_limit=scan_limit):
        job_id = snap["job_id"]
        result = store.update(job_id, status=Status.FAILED.value, error=WORKER_LOST)
        if result.reason != "ok":
            continue  # finished, or failed by another sweeper, meanwhile
        failed.append(job_id)
        logger.warning("job %s: %s -> %s (%s: no heartbeat for %.1f s)", job_id,
                       Status.RUNNING.value, Status.FAILED.value, WORKER_LOST, silent)
        if rq_connection is not None:
            process = fail_rq_job(rq_connection, job_id,
                                  f"{WORKER_LOST}: no heartbeat for {silent:.1f} s")
            if process:
                kill_orphaned_tree(process, job_id)
            _retry_lost(store, settings, rq_connection, job_id)
    return failed


def _retry_lost(store: ProgressStore, settings: Settings, connection, job_id: str) -> None:
    """A lost job with retries left (its RQ job's ``meta["retries"]``) runs again."""
    from rq.job import Job

    try:
        retries = Job.fetch(job_id, connection=connection).meta.get("retries") or 0
        if isinstance(retries, int) and retries > 0:
            retry_failed(settings, job_id, retries=retries, store=store, redis_conn=connection)
    except Exception as exc:  # an RQ job gone or unreadable, Redis away: the job stays failed
        logger.warning("job %s: not retried after it was lost: %s", job_id, exc)


def fail_rq_job(connection, job_id: str, exc_string: str) -> dict[str, Any] | None:
    """Move a ``started`` RQ job to RQ's FailedJobRegistry, as RQ's abandoned-job cleanup does.

    Returns the job's ``meta["pipeline_process"]`` (pid, pgid, host of its command),
    or None. A job RQ does not hold, or holds in another state, is left alone.
    """
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    except Exception as exc:  # an unreadable job (Redis away, a payload RQ cannot load): nothing to agree with
        logger.warning("job %s: cannot read the RQ job: %s", job_id, exc)
        return None
    process = job.meta.get("pipeline_process") if isinstance(job.meta, dict) else None
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return process
    try:
        from worker.rq_adapter import fail_started_job

        fail_started_job(connection, job, exc_string)
        logger.info("job %s: RQ job moved to the failed registry (%s)", job_id, exc_string)
    except Exception:  # RQ's internals (see the module docstring): on any failure, RQ's own cleanup will
        logger.exception("job %s: could not fail the RQ job; RQ's own cleanup will", job_id)
    return process


def command_tag(process: Any) -> str | None:
    """The ``PROGRESS_JOB_TAG`` entry a run marked its command with, from the RQ job's
    ``meta["pipeline_process"]``; None if it holds none."""
    tag = process.get("tag") if isinstance(process, dict) else None
    return tag if is_job_tag(tag) else None


def kill_orphaned_tree(process: dict[str, Any] | None, job_id: str, *,
                       grace: float = KILL_GRACE) -> list[int]:
    """Kill a dead job's surviving command tree, if it runs on this host and is still that run's.

    ``process`` is the RQ job's ``meta["pipeline_process"]``. A process must carry
    the run's tag (``process["tag"]``) in its environment: a reused pid, or another
    deployment's command of the same job id, is left alone. Returns the pids left
    alive (none, normally).
    """
    tag = command_tag(process)
    if tag is None or process is None or process.get("host") != socket.gethostname():
        return []
    try:
        pgid = int(process.get("pgid") or process.get("pid") or 0)
    except (TypeError, ValueError):
        return []
    if pgid <= 1:
        return []
    # The group's leader may be gone while a grandchild lives on, in the group or
    # double-forked away: every process that carries the job's entry counts.
    members = sorted({p for p in {pgid, *group_members(pgid)} if process_alive(p) and environ_has(p, tag)}
                     | tagged_processes(tag))
    if not members:
        return []
    logger.warning("job %s: its command (process group %d) outlived its worker: killing it",
                   job_id, pgid)
    return kill_process_tree(members[0], grace=grace, extra=members, tag=tag)


class LostJobSweeper:
    """The sweep every ``sweep_interval(settings)`` seconds, for a worker's daemon thread."""

    def __init__(self, store: ProgressStore, settings: Settings, *, rq_connection=None,
                 queue_names: tuple[str, ...] | list[str] = (), scan_limit: int = SCAN_LIMIT) -> None:
        self.store = store
        self.settings = settings
        self.rq_connection = rq_connection
        self.queue_names = tuple(queue_names)
        self.scan_limit = scan_limit
        self.interval = sweep_interval(settings)

    def sweep(self) -> list[str]:
        return sweep_lost_jobs(self.store, self.settings, rq_connection=self.rq_connection,
                               queue_names=self.queue_names, scan_limit=self.scan_limit)

    def run_forever(self, stop_event: threading.Event) -> None:
        logger.info("lost-job sweeper: every %.1fs, failing running jobs silent for %gs (pid %d)",
                    self.interval, self.settings.worker_lost_after, os.getpid())
        down = False
        while not stop_event.is_set():
            try:
                self.sweep()
                if down:
                    logger.info("lost-job sweeper: Redis is back")
                    down = False
            except (BackendUnavailable, OSError, RedisConnectionError, RedisTimeoutError) as exc:
                if not down:
                    logger.warning("lost-job sweeper: Redis is down (%s); retrying", exc)
                    down = True
            except Exception:  # a daemon thread's loop: anything else is logged, and swept again
                logger.exception("lost-job sweeper: sweep failed; retrying")
            stop_event.wait(self.interval)
        logger.info("lost-job sweeper: stopped")

    def start(self, stop_event: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, args=(stop_event,),
                                  name="lost-job-sweeper", daemon=True)
        thread.start()
        return thread
