"""The live dashboard: every job over one Server-Sent Events stream, ``GET /api/v1/events``,
and its JSON twin ``GET /api/v1/overview`` (what the index page polls while its stream is down).

What a client gets
------------------
``event: overview`` first (and again after a resync): the counts by state, the active jobs
(pending and running, newest first), the newest finished ones and the recent batches. Then
``event: job`` (a job's new snapshot; ``result`` left out), ``event: counts`` (the counts,
when they move) and ``event: batch`` (a batch's new snapshot; ``job_ids`` left out), and a
``: keep-alive`` comment after every quiet ``PROGRESS_WEB_SSE_KEEPALIVE`` seconds. There is no
``id:``: no one order of every job's events exists to resume from, so a client that comes
back gets a fresh ``overview``. ``?pipeline=`` and ``?tag=`` narrow the jobs and batches sent
(the counts are of every job); ``?status=`` narrows the overview's lists.

One Redis connection per process, not per client
------------------------------------------------
One ``Board`` per web process takes each event of the all-jobs channel from the process's
one pub/sub listener (``EventHub.subscribe_all``) in one feeder (a greenlet under gevent).
It keeps the counts, turns each event into its frame once, re-reads a batch whose member
moved (at most once every ``BATCH_EVERY`` seconds) and puts the frames in the queue of each
open dashboard stream. The feeder runs while a stream is open, or for ``LINGER`` seconds
after an overview was asked for.

The counts, bounded
-------------------
They are over the jobs of the recent-jobs index that Redis still holds: at most the newest
``COUNT_WINDOW`` (the index keeps no more). The feeder reads them with one ``HMGET`` of a few
fields per job (``ProgressStore.job_summaries``, not the full snapshot the job list reads)
when it starts and every ``RESEED_EVERY`` seconds (finished jobs expire), and keeps them by
the events in between: an event whose ``seq`` is newer than the job's moves the job from one
state to another; a job it has not seen joins (and the oldest leaves past the window).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from progress_service.errors import BackendUnavailable, InvalidInput
from progress_service.models import Status, event_to_snapshot, iso_ms, validate_id
from progress_service.store import INDEX_MAX, ProgressStore

from .events import RETRY_MS, EventStream, app_object
from .fanout import READY_TIMEOUT, RESYNC, SHUTDOWN, Delivery, EventHub, Inbox, Subscription

logger = logging.getLogger(__name__)

bp = Blueprint("live", __name__, url_prefix="/api/v1")

COUNT_WINDOW = INDEX_MAX  # jobs counted: the newest of the recent-jobs index
RESEED_EVERY = 300.0  # seconds between two fresh reads of the counts (finished jobs expire)
BATCH_EVERY = 1.0  # a batch is re-read at most this often while its members move
LINGER = 30.0  # seconds the feeder keeps going after an overview, for the next poll
ACTIVE_MAX = 200  # pending and running jobs an overview lists
FINISHED_DEFAULT, FINISHED_MAX = 20, 200  # finished jobs an overview lists (?limit=)
RECENT_BATCHES = 10
DRAIN_MAX = 1000  # events the feeder takes at once
STATES = tuple(s.value for s in Status)
ACTIVE = frozenset({Status.PENDING.value, Status.RUNNING.value})
QUERY = ("status", "pipeline", "tag", "limit", "token")  # token: web.auth's


@dataclass(frozen=True)
class Filters:
    """What a dashboard asked to see: ``?status=``, ``?pipeline=``, ``?tag=``, ``?limit=``."""

    status: str | None = None
    pipeline: str | None = None
    tag: str | None = None
    limit: int = FINISHED_DEFAULT

    def admits(self, pipeline: str | None, tags: Any) -> bool:
        return ((self.pipeline is None or pipeline == self.pipeline)
                and (self.tag is None or self.tag in (tags or ())))


def filters_from(args: Mapping[str, str]) -> Filters:
    unknown = sorted(k for k in args if k not in QUERY and not k.startswith("_"))
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(QUERY)})")
    status = args.get("status") or None
    if status is not None and status not in STATES:
        raise InvalidInput(f"status must be one of {', '.join(STATES)}, got {status!r}")
    pipeline, tag = (args.get(name) or None for name in ("pipeline", "tag"))
    for name, value in (("pipeline", pipeline), ("tag", tag)):
        if value is not None:
            validate_id(value, name)
    raw = args.get("limit") or str(FINISHED_DEFAULT)
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= FINISHED_MAX:
        raise InvalidInput(f"limit must be an integer from 1 to {FINISHED_MAX}, got {raw[:20]!r}")
    return Filters(status, pipeline, tag, int(raw))


@dataclass(frozen=True)
class Frame:
    """One SSE event the feeder made once for every dashboard stream."""

    kind: str  # "job", "counts" or "batch"
    data: bytes
    pipeline: str | None = None
    tags: tuple[str, ...] = ()
    version: int = 0  # a "counts" frame's: the board's counts version


def sse(kind: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


class Watcher(Inbox):
    """One dashboard stream's queue of frame tuples (and ``RESYNC``, ``SHUTDOWN``)."""

    def __init__(self, board: Board) -> None:
        super().__init__()
        self.board = board

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.board.unsubscribe(self)


class Board:
    """The process's one view of every recent job for its dashboards (module docstring)."""

    def __init__(self, hub: EventHub, store: ProgressStore) -> None:
        self.hub = hub
        self.store = store
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}  # job_id -> its summary, oldest first
        self._counts: Counter[str] = Counter()
        self.version = 0  # of the counts: a stream skips a counts frame older than its overview
        self._batches: dict[str, dict[str, Any]] = {}  # batch_id -> snapshot without job_ids
        self._batch_due: set[str] = set()  # batches whose members moved since they were read
        self._batch_read_at: dict[str, float] = {}
        self._watchers: set[Watcher] = set()
        self._linger_until = 0.0
        self._seeded_at = 0.0
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._ready = threading.Event()
        self.last_error: str | None = None

    # -- for the streams ----------------------------------------------------

    def subscribe(self) -> Watcher:
        """A new dashboard stream's queue; returns once the board has its counts."""
        watcher = Watcher(self)
        with self._lock:
            self._watchers.add(watcher)
            self._ensure_feeder()
        self.hub.count_clients(1)
        try:
            self._wait_ready()
        except BaseException:
            watcher.close()
            raise
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        with self._lock:
            if watcher not in self._watchers:
                return
            self._watchers.discard(watcher)
        self.hub.count_clients(-1)

    def touch(self) -> None:
        """An overview is asked for: keep (or get) the feeder going for ``LINGER`` seconds."""
        with self._lock:
            self._linger_until = time.monotonic() + LINGER
            self._ensure_feeder()
        self._wait_ready()

    def view(self, filters: Filters) -> tuple[dict[str, int], int, list[str], list[str], list[dict[str, Any]],
                                              list[str]]:
        """The counts, their version, the ids of the active and finished jobs ``filters`` admit
        (newest first, as the board last knew their states), the admitted batches and the
        pipelines of the jobs counted."""
        active: list[str] = []
        finished: list[str] = []
        with self._lock:
            counts = self._counts_now()
            for entry in reversed(self._jobs.values()):
                if len(active) >= ACTIVE_MAX and len(finished) >= filters.limit:
                    break
                if not filters.admits(entry["pipeline"], entry["tags"]) or \
                        (filters.status is not None and entry["status"] != filters.status):
                    continue
                bucket = active if entry["status"] in ACTIVE else finished
                bucket.append(entry["job_id"])
            batches = [b for b in self._batches.values() if filters.admits(b["pipeline"], b["tags"])]
            pipelines = sorted({e["pipeline"] for e in self._jobs.values() if e["pipeline"]})
            version = self.version
        batches.sort(key=lambda b: b.get("created_at") or "", reverse=True)
        return counts, version, active[:ACTIVE_MAX], finished[:filters.limit], batches, pipelines

    # -- the feeder ---------------------------------------------------------

    def _ensure_feeder(self) -> None:
        """Start the feeder unless it runs in this process (under ``self._lock``)."""
        pid = os.getpid()
        if self._thread is not None and self._thread.is_alive() and self._pid == pid:
            return
        self._pid = pid
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="progress-dashboard", daemon=True)
        self._thread.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.is_set():  # a short sleep, as EventHub's subscribe (gevent)
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"redis: the dashboard's counts are not read yet: {self.last_error}")
            time.sleep(0.01)

    def _wanted(self) -> bool:
        """Whether this feeder should go on; once it returns False the feeder must stop (a
        new stream starts another)."""
        with self._lock:
            if self._thread is not threading.current_thread():
                return False  # superseded
            if (self._watchers or time.monotonic() < self._linger_until) and not self.hub.stopping():
                return True
            self._thread = None
            self._ready.clear()
            return False

    def _run(self) -> None:
        backoff, resync = 0.1, False
        while self._wanted():
            sub: Subscription | None = None
            try:
                sub = self.hub.subscribe_all("dashboard")  # first subscribe, then read
                self._seed()
                if resync:  # events were lost meanwhile: every stream starts afresh
                    self._broadcast(RESYNC)
                self.last_error, backoff, resync = None, 0.1, True
                self._ready.set()
                self._feed(sub)
                return  # nobody watches, or the process is stopping
            except Exception as exc:  # noqa: BLE001 - the feeder must outlive any failure
                self._ready.clear()
                self.last_error = str(exc) or type(exc).__name__
                logger.warning("dashboard feeder: %s; again in %.1f s", self.last_error, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if sub is not None:
                    sub.close()

    def _feed(self, sub: Subscription) -> None:
        """Take the hub's events until nobody watches or the process stops."""
        while self._wanted():
            items: list[Any] = []
            item = sub.get(self._next_wait())
            while item is not None and len(items) < DRAIN_MAX:
                items.append(item)
                item = sub.get(0)
            if SHUTDOWN in items:
                self._broadcast(SHUTDOWN)
                return
            if RESYNC in items:  # the listener came back: events were lost
                self._seed()
                self._broadcast(RESYNC)
            else:
                self._apply([i for i in items if isinstance(i, Delivery)])
            self._read_due_batches()
            if time.monotonic() - self._seeded_at >= RESEED_EVERY:
                self._seed()

    def _next_wait(self) -> float:
        if not self._batch_due:
            return 1.0
        now = time.monotonic()
        return max(0.0, min(self._batch_read_at.get(b, 0.0) + BATCH_EVERY - now for b in self._batch_due))

    def _seed(self) -> None:
        """Read the counts afresh (and the recent batches), then tell the streams if they moved."""
        ids = self.store.recent_job_ids(COUNT_WINDOW)  # newest first
        summaries = [s for s in self.store.job_summaries(ids) if s is not None]
        jobs = {s["job_id"]: s for s in reversed(summaries)}
        batches = {}
        for batch_id in self.store.recent_batch_ids(RECENT_BATCHES):
            snap = self.store.get_batch(batch_id)
            if snap is not None:
                batches[batch_id] = brief_batch(snap)
        with self._lock:
            old = self._counts_now()
            self._jobs = jobs
            self._counts = Counter(s["status"] for s in jobs.values())
            self._batches = batches
            self._seeded_at = time.monotonic()
            frames = [] if self._counts_now() == old else [self._counts_frame()]
            watchers = list(self._watchers)
        for watcher in watchers:
            if frames:
                watcher.push(tuple(frames))

    def _apply(self, deliveries: list[Delivery]) -> None:
        """Each event: the job's frame; the counts if its state moved; its batch due a read."""
        if not deliveries:
            return
        with self._lock:
            unknown = list(dict.fromkeys(d.event["job_id"] for d in deliveries
                                         if d.event["job_id"] not in self._jobs))
        found = dict(zip(unknown, self.store.job_summaries(unknown), strict=True)) if unknown else {}
        frames: list[Frame] = []
        with self._lock:
            moved = False
            for d in deliveries:
                moved = self._take(d, found, frames) or moved
            while len(self._jobs) > COUNT_WINDOW:  # the oldest leaves the window
                oldest = self._jobs.pop(next(iter(self._jobs)))
                self._counts[oldest["status"]] -= 1
                moved = True
            if moved:
                frames.append(self._counts_frame())
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.push(tuple(frames))

    def _take(self, d: Delivery, found: dict[str, dict[str, Any] | None], frames: list[Frame]) -> bool:
        """One event (under the lock); whether the counts moved."""
        event, job_id = d.event, d.event["job_id"]
        status = str(event.get("status"))
        moved = False
        entry = self._jobs.get(job_id)
        summary = found.pop(job_id, None) if entry is None else None
        if summary is not None:  # a job the board had not seen: it joins the counts
            entry = self._jobs[job_id] = summary
            self._counts[summary["status"]] += 1
            moved = True
        if entry is not None and d.seq > entry["seq"]:
            if status in STATES and status != entry["status"]:
                self._counts[entry["status"]] -= 1
                self._counts[status] += 1
                moved = True
                entry["status"] = status
            entry["seq"] = d.seq
        meta = entry or {"paper_id": event.get("paper_id"), "pipeline": None, "tags": [], "batch_id": None,
                         "created_at_ms": 0}  # gone already: what the event says
        base = {"job_id": job_id, "paper_id": meta["paper_id"] or event.get("paper_id"),
                "pipeline": meta["pipeline"], "tags": meta["tags"], "batch_id": meta["batch_id"],
                "created_at": iso_ms(meta["created_at_ms"] or None), "started_at": None,
                "finished_at": None, "is_stale": False, "eta_seconds": None}
        snap = event_to_snapshot(base, event)
        snap.pop("result", None)
        frames.append(Frame("job", sse("job", snap), meta["pipeline"], tuple(meta["tags"])))
        if meta["batch_id"]:
            self._batch_due.add(meta["batch_id"])
        return moved

    def _read_due_batches(self) -> None:
        now = time.monotonic()
        due = [b for b in self._batch_due if now - self._batch_read_at.get(b, 0.0) >= BATCH_EVERY]
        if not due:
            return
        frames = []
        for batch_id in due:
            self._batch_due.discard(batch_id)
            self._batch_read_at[batch_id] = now
            snap = self.store.get_batch(batch_id)
            if snap is None:
                continue
            brief = brief_batch(snap)
            frames.append(Frame("batch", sse("batch", brief), brief["pipeline"], tuple(brief["tags"])))
            with self._lock:
                self._batches[batch_id] = brief
                if len(self._batches) > RECENT_BATCHES:  # the oldest leaves
                    oldest = min(self._batches.values(), key=lambda b: b.get("created_at") or "")
                    del self._batches[oldest["batch_id"]]
        if len(self._batch_read_at) > 10 * RECENT_BATCHES:
            self._batch_read_at = {b: t for b, t in self._batch_read_at.items() if now - t < BATCH_EVERY}
        if frames:
            self._broadcast(tuple(frames))

    def _counts_now(self) -> dict[str, int]:
        counts = {state: max(self._counts[state], 0) for state in STATES}
        counts["total"] = sum(counts.values())
        return counts

    def _counts_frame(self) -> Frame:
        """The counts as a frame, under a new version (under the lock)."""
        self.version += 1
        return Frame("counts", sse("counts", self._counts_now()), version=self.version)

    def _broadcast(self, item: Any) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.push(item)


def brief_batch(snap: dict[str, Any]) -> dict[str, Any]:
    """A batch as the dashboard shows it: its snapshot without the member ids."""
    return {k: v for k, v in snap.items() if k != "job_ids"}


def board() -> Board:
    return current_app.extensions["progress_board"]


def overview(filters: Filters) -> tuple[dict[str, Any], int]:
    """The dashboard's snapshot for ``filters``, and the counts' version it shows."""
    counts, version, active_ids, finished_ids, batches, pipelines = board().view(filters)
    store = board().store
    snaps = store.get_many(active_ids + finished_ids)  # the jobs' states now
    if filters.status is not None:
        snaps = [s for s in snaps if s["status"] == filters.status]
    active = [s for s in snaps if s["status"] in ACTIVE]
    finished = [s for s in snaps if s["status"] not in ACTIVE]
    if filters.status is not None:
        batches = [b for b in batches if b["status"] == filters.status]
    return {
        "counts": counts,
        "count_window": COUNT_WINDOW,
        "active": active,
        "finished": finished[:filters.limit],
        "batches": batches,
        "pipelines": pipelines,
        "server_now_ms": store.server_time_ms(),
    }, version


class DashboardStream(EventStream):
    """The body of ``GET /api/v1/events``; lets go of its queue when closed (``EventStream``)."""

    def __init__(self, app: Flask, watcher: Watcher, filters: Filters, first: dict[str, Any],
                 version: int, keepalive: float) -> None:
        self.app = app
        self.sub = watcher  # type: ignore[assignment]  # EventStream.close closes it
        self._frames = self._follow(watcher, filters, first, version, keepalive)

    def _follow(self, watcher: Watcher, filters: Filters, first: dict[str, Any], version: int,
                keepalive: float) -> Generator[bytes, None, None]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        yield sse("overview", first)
        behind = False  # a resync whose overview could not be read yet
        while True:
            item = watcher.get(keepalive)
            if item == SHUTDOWN:
                return
            if item is None:
                yield b": keep-alive\n\n"
                if not behind:
                    continue
            if item == RESYNC or item is None:
                try:
                    with self.app.app_context():
                        first, version = overview(filters)
                except BackendUnavailable as exc:
                    logger.warning("dashboard stream: cannot catch up yet: %s", exc)
                    behind = True
                    continue
                behind = False
                yield sse("overview", first)
                continue
            for frame in item:
                if frame.kind == "counts":
                    if frame.version <= version:
                        continue
                    version = frame.version
                elif not filters.admits(frame.pipeline, frame.tags):
                    continue
                yield frame.data


@bp.get("/events")
def all_events():
    """Every job, live: ``overview`` then ``job``, ``counts`` and ``batch`` events (module docstring).
    A list: under ``PROGRESS_READ_AUTH=token`` it needs the API token (``web.auth``)."""
    filters = filters_from(request.args)
    watcher = board().subscribe()  # first subscribe, then read: nothing falls in between
    try:
        first, version = overview(filters)
    except BaseException:
        watcher.close()
        raise
    keepalive = float(current_app.config["PROGRESS_SSE_KEEPALIVE"])
    body = DashboardStream(app_object(), watcher, filters, first, version, keepalive)
    return Response(body, mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})


@bp.get("/overview")
def get_overview():
    """The dashboard's snapshot as JSON: what ``/api/v1/events`` sends first."""
    filters = filters_from(request.args)
    board().touch()
    return jsonify(overview(filters)[0])


def init_app(app: Flask) -> None:
    app.extensions["progress_board"] = Board(app.extensions["progress_events"], app.extensions["progress"])
    app.register_blueprint(bp)


