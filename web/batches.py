"""Batches over HTTP: submit many papers at once, read and cancel the batch.

How a batch's snapshot stays consistent is ``progress_service.batches``' to say.
Redis first, then PostgreSQL once Redis has let the finished batch go.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, url_for

from progress_service import queue
from progress_service.batches import (
    BATCH_PLACE,
    ID_STRIDE,
    MAX_MEMBERS,
    BatchFeed,
    event_id,
    is_finished,
    member_entry,
)
from progress_service.errors import BackendUnavailable, JobNotFound
from progress_service.models import ms_from_iso, validate_id

from . import read_tokens
from .api import json_object, rq_connection, run_cancel
from .auth import BATCH, read_access, require_token
from .events import RETRY_MS, EventStream, app_object, event_hub, last_event_id
from .fanout import SHUTDOWN, Subscription
from .job_lookup import find_job, mirror, progress_store, recent_jobs
from .pages import POLL_MS

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__)

POLL = 1.0  # seconds a batch's stream waits for a member's change before it looks anyway


def batch_urls(batch_id: str, read_token: str | None = None) -> dict[str, str]:
    return {
        "status_url": url_for("batches.get_batch", batch_id=batch_id),
        "events_url": url_for("batches.batch_events", batch_id=batch_id),
        "page_url": url_for("batches.batch_page", batch_id=batch_id, token=read_token),  # None: left out
    }


def find_batch(batch_id: str) -> dict[str, Any] | None:
    """The batch's snapshot from Redis, else PostgreSQL's copy of a finished one, else None."""
    snap = progress_store().get_batch(batch_id, find_missing=lambda job_id: member_entry(find_job(job_id)))
    if snap is not None:
        if is_finished(snap):
            keep_finished_batch(snap)
        return snap
    return mirror().fetch_batch(batch_id)


def keep_finished_batch(snap: dict[str, Any]) -> None:
    """Copy a finished batch to PostgreSQL (once Redis expires it, it is read from there)."""
    try:
        mirror().save_batch(snap)
    except Exception as exc:  # PostgreSQL down: the next read of the batch tries again
        logger.warning("batch %s: not mirrored yet: %s", snap["batch_id"], exc)


def require_batch(batch_id: str) -> dict[str, Any]:
    snap = find_batch(batch_id)
    if snap is None:
        raise JobNotFound(f"batch {batch_id} not found")
    return snap


@bp.post("/api/v1/batches")
@require_token
def submit_batch() -> tuple[Response, int, dict[str, str]]:
    body = json_object({"paper_ids", "pipeline", "tags", "name"}, frozenset({"paper_ids"}))
    store = progress_store()
    batch_id, job_ids = queue.submit_batch(
        store.settings, body["paper_ids"], body.get("pipeline", "video"), tags=body.get("tags") or (),
        name=body.get("name"), store=store, redis_conn=rq_connection())
    read_token = read_tokens.for_answer(store.settings, "batch", batch_id)
    answer: dict[str, Any] = {"batch_id": batch_id, "job_ids": job_ids, **batch_urls(batch_id, read_token)}
    if read_token:
        answer["read_token"] = read_token  # it reads the batch and each member
    return jsonify(answer), 202, {"Location": answer["status_url"]}


@bp.get("/api/v1/batches/<batch_id>")
@read_access(BATCH)
def get_batch(batch_id: str):
    return jsonify(require_batch(validate_id(batch_id, "batch_id")))


@bp.post("/api/v1/batches/<batch_id>/cancel")
@require_token
def cancel_batch(batch_id: str):
    canceled = run_cancel(queue.cancel_batch, batch_id, "batch_id")
    return jsonify({**require_batch(batch_id), "canceled_job_ids": canceled}), 202


class BatchEventStream(EventStream):
    """The body of a batch's event stream; lets go of its subscription when closed (``EventStream``).

    It wakes when the process's one pub/sub listener sees a member change (or after
    ``POLL`` seconds of quiet, a safety net), reads the members' histories since its
    cursor and sends what ``BatchFeed`` makes of them, until the batch has finished.
    """

    def __init__(self, app: Flask, sub: Subscription, feed: BatchFeed,
                 first: list[tuple[int, str, dict[str, Any]]], keepalive: float) -> None:
        self.app = app
        self.sub = sub
        self._frames = self._follow(feed, first, keepalive)

    def _follow(self, feed: BatchFeed, first: list[tuple[int, str, dict[str, Any]]],
                keepalive: float) -> Generator[bytes, None, None]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        for event in first:
            yield batch_frame(event)
        store = self.app.extensions["progress"]
        quiet_since = time.monotonic()
        wait = POLL
        while not feed.finished():
            item = self.sub.get(wait)
            if item == SHUTDOWN:
                return
            while item is not None and item != SHUTDOWN:  # take every wake-up waiting at once
                item = self.sub.get(0)
            try:
                upto, histories = store.member_histories(feed.job_ids, feed.cursor // ID_STRIDE)
            except BackendUnavailable as exc:
                logger.warning("batch %s: cannot read its members yet: %s", self.sub.job_id, exc)
                wait = POLL
                continue
            events = feed.advance(histories, upto)
            for event in events:
                yield batch_frame(event)
            # changes of the millisecond still running come out on the next look, soon
            later = any(int(e["at_ms"]) > upto for entries in histories for e in entries)
            wait = 0.005 if later else POLL
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"


def batch_frame(event: tuple[int, str, dict[str, Any]]) -> bytes:
    event_id, kind, data = event
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


@bp.get("/api/v1/batches/<batch_id>/events")
@read_access(BATCH)
def batch_events(batch_id: str):
    """The batch's events: ``batch`` first, then each member's change (``progress``) and the
    batch after it (``batch``), with increasing ids; ``Last-Event-ID`` resumes; the stream
    ends once the batch has finished (204 for a client that already has the end)."""
    validate_id(batch_id, "batch_id")
    after = last_event_id()
    store = progress_store()
    fields = store.batch_fields(batch_id)
    if not fields:
        kept = find_batch(batch_id)  # Redis has let it go: PostgreSQL's copy is the end
        if kept is None:
            raise JobNotFound(f"batch {batch_id} not found")
        end = event_id(ms_from_iso(kept["finished_at"]) or 0, BATCH_PLACE)
        if after is not None and after >= end:
            return Response(status=204)
        body = [f"retry: {RETRY_MS}\n\n".encode(), batch_frame((end, "batch", kept))]
        return Response(body, mimetype="text/event-stream")
    job_ids = json.loads(fields["job_ids"])
    sub = event_hub().subscribe_many(f"batch:{batch_id}", job_ids)  # first subscribe, then read
    try:
        upto, histories = store.member_histories(job_ids)
        now = event_id(upto, BATCH_PLACE)
        if after is None or after > now:
            feed = BatchFeed(fields, histories, now)
            first = [(now, "batch", feed.snapshot(upto))]
        else:
            feed = BatchFeed(fields, histories, after)
            first = feed.advance(histories, upto)
            if not first and feed.finished():
                sub.close()
                return Response(status=204)
    except BaseException:
        sub.close()
        raise
    keepalive = float(current_app.config["PROGRESS_SSE_KEEPALIVE"])  # create_app: the settings' own
    stream = BatchEventStream(app_object(), sub, feed, first, keepalive)
    return Response(stream, mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})


@bp.get("/batches/<batch_id>/")
@read_access(BATCH)
def batch_page(batch_id: str):
    """The live page of a batch: the overall bar, counts, ETA, one live row per member."""
    batch = require_batch(validate_id(batch_id, "batch_id"))
    members, _missing = recent_jobs(batch_id=batch_id, limit=MAX_MEMBERS)
    config = {
        "batch": batch,
        "members": members,
        "events_url": url_for("batches.batch_events", batch_id=batch_id),
        "status_url": url_for("batches.get_batch", batch_id=batch_id),
        "members_url": url_for("api.list_jobs", batch_id=batch_id, limit=MAX_MEMBERS),
        "status_base": url_for("pages.status_page", paper_id="_")[:-2],
        "poll_ms": POLL_MS,
        # PROGRESS_READ_AUTH=token: the token the page was opened with, for batch.js to send on
        "token": g.get("read_token"),
    }
    return render_template("batch.html", batch=batch, config=config)
