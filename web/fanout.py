"""One Redis pub/sub connection per web process, fanned out to every SSE client.

The hub subscribes once to ``<prefix>:events`` (the all-jobs channel) from one
background listener and hands each event to the queues of the clients that
watch that job, and to each ``subscribe_all`` queue (the live dashboard's
feeder, ``web.live``, which fans it out to every dashboard). A thousand open
streams cost one Redis connection, not a thousand.

Per job with watchers the hub keeps the last full snapshot it knows (its
*base*). An event whose ``seq`` is the base's + 1 becomes the next snapshot
(``eta.LiveEta``: ``event_to_snapshot`` and a fresh ETA), encoded as an SSE
frame once and shared by every watcher. Without a base, or after a gap, the
raw event goes out and each stream fills the gap from the store itself
(``web.events``).

Under gunicorn's gevent worker ``threading`` and ``queue`` are monkey-patched:
the listener is a greenlet and a waiting client costs a greenlet, not a thread.
Without gevent (the Flask test client, ``flask run``) they are plain threads.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from progress_service.errors import BackendUnavailable
from progress_service.eta import LiveEta
from progress_service.models import TERMINAL_VALUES
from progress_service.store import parse_event

logger = logging.getLogger(__name__)

RESYNC = "resync"  # queue item: events may have been lost, re-read the store
SHUTDOWN = "shutdown"  # queue item: the process is stopping, end the stream (the client reconnects)
QUEUE_LIMIT = 500  # items a slow client may lag before it is told to resync
READY_TIMEOUT = 5.0  # seconds a new client waits for the listener's subscription


def sse_frame(snapshot: dict[str, Any]) -> bytes:
    """One ``progress`` event: ``id: <seq>``, ``event: progress``, ``data: <snapshot>``."""
    data = json.dumps(snapshot, separators=(",", ":"), allow_nan=False)
    return f"id: {snapshot['seq']}\nevent: progress\ndata: {data}\n\n".encode()


@dataclass(frozen=True)
class Delivery:
    """What the hub puts in a watcher's queue for one event.

    ``snapshot`` and ``frame`` are set when the hub could build the snapshot
    from its base; otherwise only the raw ``event`` is there.
    """

    seq: int
    event: dict[str, Any]
    snapshot: dict[str, Any] | None = None
    frame: bytes | None = None


@dataclass
class _JobFeed:
    watchers: set[Subscription] = field(default_factory=set)
    base: dict[str, Any] | None = None
    eta: LiveEta = field(default_factory=LiveEta)

    def offer(self, snapshot: dict[str, Any]) -> None:
        if self.base is None or snapshot["seq"] > self.base["seq"]:
            self.base = snapshot
            self.eta.seed(snapshot)

    def advance(self, event: dict[str, Any]) -> Delivery | None:
        seq = int(event["seq"])
        base = self.base
        if base is not None and seq <= base["seq"]:
            return None  # old news for every watcher
        if base is None or seq != base["seq"] + 1:
            self.base = None  # a gap: the watchers re-read the store
            return Delivery(seq, event)
        snapshot = self.eta.advance(base, event)
        self.base = snapshot
        return Delivery(seq, event, snapshot, sse_frame(snapshot))


class Inbox:
    """A queue one stream reads and a feeder fills; a slow reader is told to resync instead."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.closed = False

    def push(self, item: Any) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._drain()
            item = RESYNC  # the client was too slow: it re-reads the store instead
        self._queue.put_nowait(item)

    def get(self, timeout: float) -> Any:
        """The next item, ``RESYNC``, or None after ``timeout`` seconds of quiet."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class Subscription(Inbox):
    """One SSE client's view of one job (or of a batch's members, or of every job): a queue the
    hub fills."""

    def __init__(self, hub: EventHub, job_id: str, members: tuple[str, ...] = (), *,
                 every_job: bool = False) -> None:
        super().__init__()
        self.hub = hub
        self.job_id = job_id
        self.every_job = every_job  # the all-jobs feed (web.live): each event, raw
        self.members = () if every_job else (members or (job_id,))  # a batch's stream watches every member

    def get(self, timeout: float) -> Delivery | str | None:
        return super().get(timeout)

    def offer(self, snapshot: dict[str, Any]) -> None:
        """Tell the hub a snapshot this client read from the store (a base for the next event)."""
        self.hub.offer(self.job_id, snapshot)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self)


class EventHub:
    """The process's one pub/sub listener and its watchers, keyed by job id.

    ``client_factory`` builds the Redis client whose pub/sub connection the
    listener holds; it is called in the listener, lazily, on the first
    subscription, so nothing connects at import or in the gunicorn master.
    """

    def __init__(self, client_factory: Callable[[], Any], channel: str, *,
                 step_stats: Callable[[str], Any] | None = None) -> None:
        self._client_factory = client_factory
        self.channel = channel
        self.step_stats = step_stats  # pipeline -> its step statistics, for each event's ETA
        self._jobs: dict[str, _JobFeed] = {}
        self._every: set[Subscription] = set()  # subscribe_all's
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._pubsub = None
        self.client_count = 0
        self.last_error: str | None = None  # the listener's last failure, until it subscribes again

    # -- for the event stream ---------------------------------------------

    def subscribe(self, job_id: str) -> Subscription:
        """Watch ``job_id``; returns once the listener is subscribed, so nothing is missed."""
        return self.subscribe_many(job_id, [job_id])

    def subscribe_many(self, name: str, job_ids: list[str]) -> Subscription:
        """Watch every job of ``job_ids`` through one queue (a batch's stream, named ``name``)."""
        return self._subscribe(Subscription(self, name, tuple(job_ids)))

    def subscribe_all(self, name: str) -> Subscription:
        """Watch every job: each event of the all-jobs channel, raw (``Delivery`` without a
        snapshot), in the order published; ``RESYNC`` after a reconnect, ``SHUTDOWN`` at the end."""
        return self._subscribe(Subscription(self, name, every_job=True))

    def _subscribe(self, sub: Subscription) -> Subscription:
        if self._stopping.is_set():
            raise BackendUnavailable("this web process is shutting down")
        self._ensure_listener()
        deadline = time.monotonic() + READY_TIMEOUT
        # A short sleep, not Event.wait(timeout): with a thousand greenlets waiting on one
        # gevent Event at once (a burst of streams at start-up), some were never woken.
        while not self._ready.is_set():
            if self.last_error is not None or time.monotonic() > deadline:
                raise BackendUnavailable(f"redis: the event listener is not subscribed: {self.last_error}")
            time.sleep(0.01)
        with self._lock:
            if sub.every_job:
                self._every.add(sub)
            else:
                self.client_count += 1  # a feeder of other streams (web.live) is none itself
            for job_id in sub.members:
                feed = self._jobs.get(job_id)
                if feed is None:
                    feed = self._jobs[job_id] = _JobFeed(eta=LiveEta(self.step_stats))
                feed.watchers.add(sub)
        return sub

    def stopping(self) -> bool:
        """Whether ``close`` was called: the process is shutting down."""
        return self._stopping.is_set()

    def count_clients(self, delta: int) -> None:
        """Streams fed from a ``subscribe_all`` subscription (web.live's) come and go."""
        with self._lock:
            self.client_count += delta

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            was_in = False
            self._every.discard(sub)
            for job_id in sub.members:
                feed = self._jobs.get(job_id)
                if feed is None or sub not in feed.watchers:
                    continue
                was_in = True
                feed.watchers.discard(sub)
                if not feed.watchers:
                    del self._jobs[job_id]
            if was_in:
                self.client_count -= 1

    def offer(self, job_id: str, snapshot: dict[str, Any]) -> None:
        with self._lock:
            feed = self._jobs.get(job_id)
            if feed is not None:
                feed.offer(snapshot)

    def close(self) -> None:
        """Stop the listener and end every open stream (shutdown, tests).

        The clients reconnect to whichever worker is up. A plain ``EventSource``
        does so by itself, after the stream's ``retry``, with ``Last-Event-ID``,
        and misses nothing the job's capped history still holds (``web.events``).
        The status page (``static/status.js``) closes its ``EventSource``
        instead: it polls ``?_json=1`` at once and opens a fresh stream later
        (``web.pages.STREAM_RETRY_MS``, then longer), which starts with the
        job's current snapshot.
        """
        self._stopping.set()
        pubsub = self._pubsub
        if pubsub is not None:
            with suppress(RedisError, OSError):  # closing a broken connection may fail; we are leaving anyway
                pubsub.close()
        with self._lock:
            watchers = {sub for feed in self._jobs.values() for sub in feed.watchers} | self._every
        for sub in watchers:
            sub.push(SHUTDOWN)

    # -- the listener -----------------------------------------------------

    def _ensure_listener(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._thread.is_alive() and self._pid == pid:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == pid:
                return
            self._pid = pid  # after a fork the child starts a listener of its own
            self._ready.clear()
            self._thread = threading.Thread(target=self._run, name="progress-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        confirmed = 0
        client = None
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._client_factory()
                self._pubsub = pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "message":
                        self._dispatch(message["data"])
                    elif kind == "subscribe":
                        confirmed += 1
                        self.last_error = None
                        self._ready.set()
                        backoff = 0.1
                        if confirmed > 1:  # a reconnect: events may have been lost meanwhile
                            logger.info("event listener: resubscribed to %s", self.channel)
                            self._broadcast(RESYNC)
                        else:
                            logger.info("event listener: subscribed to %s", self.channel)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any failure
                self._ready.clear()
                self.last_error = str(exc) or type(exc).__name__
                if self._stopping.is_set():
                    break
                logger.warning("event listener: %s; reconnecting in %.1f s", exc, backoff)
                if self._pubsub is not None:
                    with suppress(RedisError, OSError):  # a broken connection: replaced below anyway
                        self._pubsub.close()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                confirmed = max(confirmed, 1)  # the next confirmation is a re-subscription

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            event = parse_event(raw)
        except (ValueError, TypeError):
            logger.warning("event listener: ignored a malformed event %r", raw[:200])
            return
        with self._lock:
            every = list(self._every)
            feed = self._jobs.get(event["job_id"])
            delivery = None if feed is None else feed.advance(event)
            watchers = [] if feed is None else list(feed.watchers)
        if delivery is not None:
            for sub in watchers:
                sub.push(delivery)
        if every:
            plain = Delivery(int(event["seq"]), event)
            for sub in every:
                sub.push(plain)

    def _broadcast(self, item: str) -> None:
        with self._lock:
            watchers = {sub for feed in self._jobs.values() for sub in feed.watchers} | self._every
            for feed in self._jobs.values():
                feed.base = None
        for sub in watchers:
            sub.push(item)


def is_terminal(snapshot: dict[str, Any]) -> bool:
    return snapshot["status"] in TERMINAL_VALUES
