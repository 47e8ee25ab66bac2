"""Server-Sent Events: ``GET /api/v1/jobs/<job_id>/events``.

Each change of the job is one event::

    id: <seq>
    event: progress
    data: <snapshot JSON>

The stream subscribes (through the process's one pub/sub listener,
``web.fanout``) *before* it reads the job, so a change made in between is not
lost; every event whose ``seq`` is not newer than the last one sent is dropped,
so none is sent twice. It ends after the terminal event (at once for a
finished job).

A stream that ends is, to a browser's ``EventSource``, a dropped connection:
it reconnects a few seconds later with ``Last-Event-ID``. For a finished job
whose last event the client already has (``Last-Event-ID`` >= the job's seq)
the answer is therefore ``204 No Content``, with no body, which per the SSE
spec makes ``EventSource`` stop reconnecting. A client that connects to a
finished job without ``Last-Event-ID`` still gets its final snapshot, then the
end; one with a lower id gets the events it missed, then the end. This holds
as well for a job served from PostgreSQL once Redis has expired it.

``Last-Event-ID`` (or ``?last_event_id=`` for clients that cannot set it)
resumes a stream: the client gets one event for each seq it missed, in order,
from the job's history. History entries hold only the progress fields, so the
replayed events are snapshots with those fields set from the history (and
``message``, ``error``, ``result``, ``eta_seconds``, ``eta_source`` null); the newest missed
seq is the full current snapshot. A seq the capped history no longer holds
cannot be replayed.

A comment line (``: keep-alive``) goes out after every quiet ``PROGRESS_WEB_SSE_KEEPALIVE``
seconds; it also re-reads the job, a safety net for a pub/sub message Redis
dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, Flask, Response, current_app, request

from progress_service.errors import BackendUnavailable, InvalidInput, JobNotFound
from progress_service.models import (
    MAX_EXACT_INT,
    TERMINAL_VALUES,
    Status,
    event_to_snapshot,
    validate_id,
)

from .auth import JOB, read_access
from .fanout import RESYNC, SHUTDOWN, Delivery, EventHub, Subscription, is_terminal, sse_frame
from .job_lookup import find_job, job_history

if TYPE_CHECKING:
    from werkzeug.local import LocalProxy

logger = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/api/v1")

RETRY_MS = 3000  # how long EventSource waits before reconnecting
SEQ_DIGITS = re.compile(r"[0-9]{1,16}")


def event_hub() -> EventHub:
    return current_app.extensions["progress_events"]


def app_object() -> Flask:
    """The app behind ``current_app``, for a stream that outlives the request's context."""
    # current_app is a werkzeug LocalProxy; Flask types it as Flask itself.
    return cast("LocalProxy[Flask]", current_app)._get_current_object()


def last_event_id() -> int | None:
    """The seq a reconnecting client has: ``Last-Event-ID``, else ``?last_event_id=``.

    ASCII digits only (``str.isdigit`` would take "²", which ``int`` refuses), and
    few enough of them for ``int`` to read them at once and a double to hold them.
    """
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or ""
    raw = raw.strip()
    if not raw:
        return None
    if SEQ_DIGITS.fullmatch(raw) is None or int(raw) > MAX_EXACT_INT:
        raise InvalidInput(f"Last-Event-ID must be a seq (a whole number from 0 to {MAX_EXACT_INT}),"
                           f" got {raw[:40]!r}")
    return int(raw)


def snapshot_at(entry: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as it was at one history entry, with ``current`` for the fields that never change."""
    steps = current["steps"]
    status = entry["status"]
    step = entry["current_step"]
    if status == Status.COMPLETED.value:
        done, step = list(steps), None
    elif step in steps:
        done = steps[: steps.index(step)]
    else:
        done = []
    return {
        **current,
        "seq": entry["seq"],
        "status": status,
        "progress_percent": entry["progress_percent"],
        "current_step": step,
        "completed_steps": done,
        "message": None,
        "error": None,
        "result": None,
        "progress_updated_at": entry["at"],
        "started_at": None if status == Status.PENDING.value else current["started_at"],
        "finished_at": entry["at"] if status in TERMINAL_VALUES else None,
        "is_stale": False,
        "eta_seconds": None,
        "eta_source": None,
    }


def missed(job_id: str, current: dict[str, Any], after_seq: int) -> list[dict[str, Any]]:
    """Snapshots for every seq after ``after_seq`` up to ``current``'s, oldest first."""
    if current["seq"] <= after_seq:
        return []
    if current["seq"] == after_seq + 1:
        return [current]
    entries = [e for e in job_history(job_id) if after_seq < e["seq"] < current["seq"]]
    return [snapshot_at(e, current) for e in entries] + [current]


class EventStream:
    """The response body: a generator of frames that also lets go of its subscription.

    The WSGI server calls ``close()`` when the client leaves or the stream ends,
    even if the body was never iterated (a HEAD request).
    """

    def __init__(self, app: Flask, sub: Subscription, backlog: list[dict[str, Any]],
                 shown: dict[str, Any], keepalive: float) -> None:
        self.app = app  # the stream outlives the request's context: it pushes the app's own
        self.sub = sub
        self._frames = self._run(backlog, shown, keepalive)

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        try:
            self._frames.close()
        finally:
            self.sub.close()

    def _run(self, backlog: list[dict[str, Any]], shown: dict[str, Any],
             keepalive: float) -> Generator[bytes, None, None]:
        """The frames; a generator, so that close() can stop it where it waits."""
        sub, job_id = self.sub, self.sub.job_id
        yield f"retry: {RETRY_MS}\n\n".encode()
        for snap in backlog:
            yield sse_frame(snap)
        if is_terminal(shown):
            return
        while True:
            item = sub.get(keepalive)
            if item is None:
                yield b": keep-alive\n\n"
                item = RESYNC  # and a fresh read, in case Redis dropped a message
            elif item == SHUTDOWN:
                return
            if isinstance(item, Delivery):
                if item.seq <= shown["seq"]:
                    continue
                if item.seq == shown["seq"] + 1:
                    if item.frame is not None and item.snapshot is not None:
                        shown = item.snapshot
                        yield item.frame
                    else:
                        shown = event_to_snapshot(shown, item.event)
                        yield sse_frame(shown)
                    if is_terminal(shown):
                        return
                    continue
            # a gap, a resync or a quiet spell: read the store and send what was missed
            try:
                with self.app.app_context():
                    current = find_job(job_id)
                    backlog = [] if current is None else missed(job_id, current, shown["seq"])
            except BackendUnavailable as exc:
                # Redis is away: keep the stream; the listener's re-subscription (or
                # the next keep-alive) brings a resync once it is back.
                logger.warning("job %s: cannot catch up yet: %s", job_id, exc)
                continue
            if current is None:
                logger.info("job %s: vanished while streaming; closing the stream", job_id)
                return
            for snap in backlog:
                yield sse_frame(snap)
                shown = snap
            sub.offer(current)
            if is_terminal(shown):
                return


@bp.get("/jobs/<job_id>/events")
@read_access(JOB)
def job_events(job_id: str):
    validate_id(job_id, "job_id")
    after = last_event_id()
    sub = event_hub().subscribe(job_id)  # first subscribe, then read: nothing falls in between
    try:
        current = find_job(job_id)
        if current is None:
            raise JobNotFound(f"job {job_id} not found")
        if after is not None and after >= current["seq"] and is_terminal(current):
            sub.close()  # the client has the end already: tell its EventSource to stop reconnecting
            logger.debug("job %s: ended, and the client has seq %s: 204", job_id, after)
            return Response(status=204)
        if after is None or after > current["seq"]:
            backlog = [current]  # a new client, or one whose seq this job never had
        else:
            backlog = missed(job_id, current, after)
    except BaseException:
        sub.close()
        raise
    sub.offer(current)
    keepalive = float(current_app.config["PROGRESS_SSE_KEEPALIVE"])  # create_app: the settings' own
    body = EventStream(app_object(), sub, backlog, current, keepalive)
    logger.debug("job %s: stream opened (after seq %s)", job_id, after)
    return Response(body, mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})


def open_streams() -> int:
    """SSE clients open in this process (for /metrics)."""
    return event_hub().client_count
