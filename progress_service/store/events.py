"""The store's pub/sub side: the events of one job's channel, parsed (``EventFeed``), and
``ProgressStore.subscribe``'s loop (``Subscription``): the current snapshot, then each change once.

A ``Subscription`` holds what the loop needs between two snapshots (the last one
yielded, when the store last answered and last read the job, whether Redis is
away) as attributes, so that each step of the loop is a method of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from redis.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable, JobNotFound
from ..models import TERMINAL_VALUES, event_to_snapshot
from ..scripts import as_text as _text

if TYPE_CHECKING:
    from . import ProgressStore

logger = logging.getLogger("progress_service.store")

POLL = 0.5  # seconds one wait for an event lasts (and one wait for a Redis that went away)


def parse_event(raw: str | bytes) -> dict[str, Any]:
    """One pub/sub payload (README, "Redis pub/sub") -> a dict; ``ValueError`` if it is not one."""
    event = json.loads(raw)
    if not isinstance(event, dict) or not isinstance(event.get("job_id"), str) \
            or not isinstance(event.get("seq"), int):
        raise ValueError(f"not a progress event: {_text(raw)[:200]!r}")
    return event


class EventFeed(AbstractContextManager["EventFeed"]):
    """The parsed events of one pub/sub channel (``ProgressStore.events``), in the order published.

    ``get`` waits for the next one, until ``close`` (or the end of a ``with``). redis-py
    reconnects and resubscribes by itself after a lost connection; events published
    meanwhile are lost (a reader fills the gap from the snapshot's ``seq``).
    """

    def __init__(self, pubsub: PubSub, channel: str) -> None:
        self.channel = channel
        self._pubsub = pubsub
        try:
            pubsub.subscribe(channel)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            pubsub.close()
            raise BackendUnavailable(f"redis: {exc}") from exc

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None after ``timeout`` seconds without one.

        Raises ``BackendUnavailable`` while Redis does not answer (the next call
        reconnects). A payload that is not an event is logged and skipped.
        """
        try:
            message = self._pubsub.get_message(timeout=timeout)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        if message is None or message.get("type") != "message":
            return None
        try:
            return parse_event(message["data"])
        except ValueError:
            logger.warning("%s: ignored a malformed event %r", self.channel, message["data"][:200])
            return None

    def close(self) -> None:
        self._pubsub.close()

    def __exit__(self, *exc_info: object) -> None:  # __enter__: AbstractContextManager's, self
        self.close()


class Subscription:
    """One reader of job ``job_id``: iterate it for its snapshots (see ``ProgressStore.subscribe``)."""

    def __init__(self, store: ProgressStore, job_id: str, *, timeout: float | None, idle_check: float,
                 derived: bool) -> None:
        self.store = store
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.idle_check = idle_check
        self.derived = derived
        self.snap: dict[str, Any] = {}  # the snapshot last yielded
        self.last_seen = 0.0  # when the store last told something new (monotonic)
        self.last_read = 0.0  # when the job was last read whole
        self.lost = False  # Redis went away, and has not answered since
        self.back_at: float | None = None  # when Redis answered again after going away

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.store.events(self.job_id) as feed:
            snap = self.store.get(self.job_id)
            if snap is None:
                raise JobNotFound(f"job {self.job_id} not found")
            self.snap = snap
            yield snap
            self.last_seen = self.last_read = time.monotonic()
            while self.snap["status"] not in TERMINAL_VALUES:
                self._check_deadline()
                event = self._next_event(feed)
                fresh = self._from_event(event) if event is not None else self._idle_read()
                if fresh is not None:
                    self.snap = fresh
                    yield fresh

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} did not finish within {self.timeout} s")

    def _next_event(self, feed: EventFeed) -> dict[str, Any] | None:
        """The job's next event, or None after ``POLL`` seconds (or while Redis is away)."""
        try:
            event = feed.get(timeout=POLL)  # reconnects and resubscribes
        except BackendUnavailable as exc:
            if not self.lost:
                logger.warning("job %s: Redis connection lost (%s); waiting for it", self.job_id, exc)
                self.lost = True
            time.sleep(POLL)
            self.last_seen = 0.0  # re-read at once after the reconnect
            return None
        self._answered()
        return event

    def _from_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The snapshot after ``event``, or None if it is not newer than the last one. The
        next ``seq`` is applied to the last snapshot; after a gap (or, ``derived``, once a
        read is due) the job is read."""
        if event["seq"] <= self.snap["seq"]:
            return None
        read_due = self.derived and time.monotonic() - self.last_read >= self.idle_check
        if event["seq"] == self.snap["seq"] + 1 and not read_due:
            return self._newer(event_to_snapshot(self.snap, event))
        fresh = self.store.get(self.job_id)
        self.last_read = time.monotonic()
        return self._newer(fresh)

    def _idle_read(self) -> dict[str, Any] | None:
        """After ``idle_check`` quiet seconds, the job read afresh (None if nothing is newer;
        ``derived``: also a read whose ``is_stale`` or ``eta_seconds`` moved).

        A job that has vanished is waited for ``worker_lost_after`` seconds after a
        Redis that went away came back (empty: its runner re-creates it), else
        ``JobNotFound``."""
        if time.monotonic() - self.last_seen < self.idle_check:
            return None
        try:
            fresh = self.store.get(self.job_id)
        except BackendUnavailable:
            return None  # still away: the next get_message reconnects
        self.last_seen = self.last_read = time.monotonic()
        self._answered()
        if fresh is None:
            if self.back_at is not None and time.monotonic() - self.back_at < self.store.settings.worker_lost_after:
                return None  # Redis came back empty: the job's runner re-creates it
            raise JobNotFound(f"job {self.job_id} vanished from Redis")
        if self.derived and fresh["seq"] == self.snap["seq"] and _derived(fresh) != _derived(self.snap):
            return fresh
        return self._newer(fresh)

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


def _derived(snapshot: dict[str, Any]) -> tuple[Any, Any]:
    return snapshot["is_stale"], snapshot["eta_seconds"]
