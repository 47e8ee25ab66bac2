"""``ProgressStore.subscribe``'s loop: the current snapshot, then each change once.

A ``Subscription`` holds what the loop needs between two snapshots (the last one
yielded, when the store last answered, whether Redis is away) as attributes, so
that each step of the loop is a method of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable, JobNotFound
from ..models import TERMINAL, event_to_snapshot, validate_id

if TYPE_CHECKING:
    from . import ProgressStore

logger = logging.getLogger("progress_service.store")

POLL = 0.5  # seconds one wait for an event lasts (and one wait for a Redis that went away)
_FINISHED = frozenset(s.value for s in TERMINAL)


class Subscription:
    """One reader of job ``job_id``: iterate it for its snapshots (see ``ProgressStore.subscribe``)."""

    def __init__(self, store: ProgressStore, job_id: str, *, timeout: float | None, idle_check: float) -> None:
        self.store = store
        self.job_id = validate_id(job_id)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.idle_check = idle_check
        self.snap: dict[str, Any] = {}  # the snapshot last yielded
        self.last_seen = 0.0  # when the store last told something new (monotonic)
        self.lost = False  # Redis went away, and has not answered since
        self.back_at: float | None = None  # when Redis answered again after going away

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                pubsub.subscribe(self.store.keys.events(self.job_id))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise BackendUnavailable(f"redis: {exc}") from exc
            snap = self.store.get(self.job_id)
            if snap is None:
                raise JobNotFound(f"job {self.job_id} not found")
            self.snap = snap
            yield snap
            self.last_seen = time.monotonic()
            while self.snap["status"] not in _FINISHED:
                self._check_deadline()
                event = self._next_event(pubsub)
                fresh = self._from_event(event) if event is not None else self._idle_read()
                if fresh is not None:
                    self.snap = fresh
                    yield fresh
        finally:
            pubsub.close()

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} did not finish within {self.timeout} s")

    def _next_event(self, pubsub: Any) -> dict[str, Any] | None:
        """The job's next event, or None after ``POLL`` seconds (or while Redis is away)."""
        try:
            message = pubsub.get_message(timeout=POLL)  # reconnects and resubscribes
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not self.lost:
                logger.warning("job %s: Redis connection lost (%s); waiting for it", self.job_id, exc)
                self.lost = True
            time.sleep(POLL)
            self.last_seen = 0.0  # re-read at once after the reconnect
            return None
        self._answered()
        if message is None or message.get("type") != "message":
            return None
        event: dict[str, Any] = json.loads(message["data"])
        return event

    def _from_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The snapshot after ``event``, or None if it is not newer than the last one.
        The next ``seq`` is applied to the last snapshot; after a gap the job is read."""
        if event["seq"] <= self.snap["seq"]:
            return None
        if event["seq"] == self.snap["seq"] + 1:
            return self._newer(event_to_snapshot(self.snap, event))
        return self._newer(self.store.get(self.job_id))

    def _idle_read(self) -> dict[str, Any] | None:
        """After ``idle_check`` quiet seconds, the job read afresh (None if nothing is newer).

        A job that has vanished is waited for ``worker_lost_after`` seconds after a
        Redis that went away came back (empty: its runner re-creates it), else
        ``JobNotFound``."""
        if time.monotonic() - self.last_seen < self.idle_check:
            return None
        try:
            fresh = self.store.get(self.job_id)
        except BackendUnavailable:
            return None  # still away: the next get_message reconnects
        self.last_seen = time.monotonic()
        self._answered()
        if fresh is not None:
            return self._newer(fresh)
        if self.back_at is not None and time.monotonic() - self.back_at < self.store.settings.worker_lost_after:
            return None  # Redis came back empty: the job's runner re-creates it
        raise JobNotFound(f"job {self.job_id} vanished from Redis")

    def _newer(self, fresh: dict[str, Any] | None) -> dict[str, Any] | None:
        if fresh is None or fresh["seq"] <= self.snap["seq"]:
            return None
        self.last_seen = time.monotonic()
        return fresh

    def _answered(self) -> None:
        """Redis answered (by pub/sub or a read, whichever comes first)."""
        if self.lost:
            logger.info("job %s: Redis is back", self.job_id)
            self.lost, self.back_at = False, time.monotonic()
