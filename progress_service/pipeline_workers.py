"""Which pipelines the live workers of a queue know, so that a submit refuses one they do not.

    announcer = PipelineAnnouncer(rq_conn, settings, worker.name, load_pipelines(settings))
    announcer.start(stop_event)           # a worker: announced now, refreshed in a thread
    check_workers_know(rq_conn, settings, pipeline)   # a submit: InvalidInput if they disagree

Every ``progress-service worker`` announces on RQ's Redis (``REDIS_URL``) the
pipelines it knows, name -> steps, under its name and queue
(``Keys.worker_pipelines``, indexed by ``Keys.queue_workers``). It refreshes the
announcement every ``settings.heartbeat_interval`` seconds; an announcement not
refreshed for ``PROGRESS_WORKER_LOST_AFTER`` seconds expires (a killed worker), and
a worker that stops withdraws its own.

The rule at submit (``progress_service.queue``): a pipeline the submitting process
does not know is refused (``require_pipeline``); then, when live workers of the
queue have announced, the pipeline is refused unless every one of them knows it,
with the same steps: RQ hands a job to whichever worker asks first, so a job of a
pipeline one worker lacks would fail there. When no worker is live the job is
queued: it waits ``pending`` (and reads stale after ``PROGRESS_PENDING_STALE_AFTER``)
until a worker comes, and a worker that does not know the pipeline fails it,
saying so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import redis

from .errors import BackendUnavailable, InvalidInput
from .keys import Keys

if TYPE_CHECKING:
    from .config import Settings
    from .pipelines import Pipeline

logger = logging.getLogger(__name__)

__all__ = ["PipelineAnnouncer", "announce", "check_workers_know", "live_workers", "withdraw",
           "worker_support"]

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


def _ms(conn: redis.Redis) -> int:
    sec, usec = conn.time()
    return int(sec) * 1000 + int(usec) // 1000


def announce(conn: redis.Redis, settings: Settings, worker: str, pipelines: Mapping[str, Pipeline],
             ttl: float | None = None) -> None:
    """Announce (or refresh) that ``worker`` runs ``pipelines`` for ``settings.queue_name``,
    for ``ttl`` seconds (default ``settings.worker_lost_after``)."""
    keys, queue = Keys(settings.key_prefix), settings.queue_name
    ttl_ms = max(1, int((ttl if ttl is not None else settings.worker_lost_after) * 1000))
    body = json.dumps({"pipelines": {name: list(p.steps) for name, p in pipelines.items()},
                       "host": socket.gethostname(), "pid": os.getpid()})
    now = _ms(conn)
    with conn.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker_pipelines(queue, worker), body, px=ttl_ms)
        # The index has no TTL of its own (one worker's would cut short the others'): every
        # announce and every read drops the members that have expired, and Redis deletes it
        # once it is empty.
        pipe.zremrangebyscore(keys.queue_workers(queue), "-inf", now)
        pipe.zadd(keys.queue_workers(queue), {worker: now + ttl_ms})
        pipe.execute()


def withdraw(conn: redis.Redis, settings: Settings, worker: str) -> None:
    """Take ``worker``'s announcement back (it stops)."""
    keys, queue = Keys(settings.key_prefix), settings.queue_name
    with conn.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker_pipelines(queue, worker))
        pipe.zrem(keys.queue_workers(queue), worker)
        pipe.execute()


def live_workers(conn: redis.Redis, settings: Settings) -> dict[str, dict[str, list[str]]]:
    """The live workers of ``settings.queue_name`` and what they announced: worker ->
    {pipeline: steps}. Expired announcements are dropped from the index on the way."""
    keys, queue = Keys(settings.key_prefix), settings.queue_name
    index = keys.queue_workers(queue)
    try:
        now = _ms(conn)
        with conn.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(index, "-inf", now)
            pipe.zrange(index, 0, -1)
            _removed, members = pipe.execute()
        names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        bodies = conn.mget([keys.worker_pipelines(queue, n) for n in names]) if names else []
    except REDIS_DOWN as exc:
        raise BackendUnavailable(f"redis (RQ queue {queue}): {exc}") from exc
    live = {}
    for name, body in zip(names, bodies, strict=True):
        if body is None:
            continue  # expired between the two reads
        try:
            pipelines = json.loads(body)["pipelines"]
        except (ValueError, KeyError, TypeError):
            logger.warning("queue %s: worker %s announced something unreadable; ignored", queue, name)
            continue
        live[name] = {str(k): list(v) for k, v in pipelines.items()}
    return live


def check_workers_know(conn: redis.Redis, settings: Settings, pipeline: Pipeline) -> None:
    """``InvalidInput`` unless every live worker of the queue knows ``pipeline`` with its steps
    (none live: nothing to check; module docstring)."""
    live = live_workers(conn, settings)
    if not live:
        return
    steps = list(pipeline.steps)
    queue = settings.queue_name
    lacking = sorted(w for w, known in live.items() if pipeline.name not in known)
    if lacking:
        known = sorted({name for w in lacking for name in live[w]})
        raise InvalidInput(
            f"pipeline {pipeline.name!r} is unknown to {len(lacking)} of the {len(live)} live "
            f"workers of queue {queue!r} ({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}; "
            f"they know {', '.join(known) or 'none'}): give the workers the same PROGRESS_PIPELINES "
            f"file and entry points as this process, and restart them")
    differ = sorted(w for w, known in live.items() if known[pipeline.name] != steps)
    if differ:
        theirs = live[differ[0]][pipeline.name]
        raise InvalidInput(
            f"pipeline {pipeline.name!r} has steps {steps} here, but worker {differ[0]} of queue "
            f"{queue!r} knows it with steps {theirs}"
            f"{f' ({len(differ) - 1} more workers differ too)' if len(differ) > 1 else ''}: "
            f"give the workers and this process the same definition, and restart them")


def worker_support(conn: redis.Redis, settings: Settings,
                   pipelines: Mapping[str, Pipeline]) -> tuple[int, dict[str, int]]:
    """(live workers of the queue, {pipeline: how many of them know it with the same steps})."""
    live = live_workers(conn, settings)
    return len(live), {name: sum(1 for known in live.values() if known.get(name) == list(p.steps))
                       for name, p in pipelines.items()}


class PipelineAnnouncer:
    """A worker's announcement, refreshed every ``settings.heartbeat_interval`` seconds in a
    daemon thread while the worker lives, and withdrawn when it stops."""

    def __init__(self, conn: redis.Redis, settings: Settings, worker: str,
                 pipelines: Mapping[str, Pipeline]) -> None:
        self.conn = conn
        self.settings = settings
        self.worker = worker
        self.pipelines = dict(pipelines)
        self.interval = settings.heartbeat_interval
        self.thread: threading.Thread | None = None

    def announce(self) -> None:
        announce(self.conn, self.settings, self.worker, self.pipelines)

    def run_forever(self, stop_event: threading.Event) -> None:
        down = False
        while not stop_event.wait(self.interval):
            try:
                self.announce()
                if down:
                    logger.info("worker %s: Redis is back; pipelines announced again", self.worker)
                    down = False
            except REDIS_DOWN + (redis.RedisError,) as exc:
                if not down:
                    logger.warning("worker %s: cannot announce its pipelines (%s); retrying",
                                   self.worker, exc)
                    down = True

    def start(self, stop_event: threading.Event) -> threading.Thread:
        """Announce now (a submit right after this knows the worker), then keep it fresh."""
        self.announce()
        logger.info("worker %s: announced pipelines %s on queue %r (refreshed every %.1fs)",
                    self.worker, ", ".join(self.pipelines), self.settings.queue_name, self.interval)
        self.thread = threading.Thread(target=self.run_forever, args=(stop_event,),
                                       name="pipeline-announcer", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Withdraw the announcement (call after setting the stop event)."""
        if self.thread is not None:
            self.thread.join(timeout=5)
        try:
            withdraw(self.conn, self.settings, self.worker)
        except (*REDIS_DOWN, redis.RedisError) as exc:
            logger.warning("worker %s: could not withdraw its pipelines (%s); they expire by "
                           "themselves", self.worker, exc)
