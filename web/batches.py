"""Batches over HTTP: submit many papers at once, read and cancel the batch.

How a batch's snapshot stays consistent is ``progress_service.batches``' to say.
Redis first, then PostgreSQL once Redis has let the finished batch go.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, url_for

from progress_service.errors import JobNotFound
from progress_service.models import ms_from_iso, validate_id

from .api import json_object, rq_connection, worker_jobs
from .auth import require_token
from .jobs import find_job, mirror, progress_store

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__)


def batch_urls(batch_id: str) -> dict[str, str]:
    return {
        "status_url": url_for("batches.get_batch", batch_id=batch_id),
        "events_url": url_for("batches.batch_events", batch_id=batch_id),
        "page_url": url_for("batches.batch_page", batch_id=batch_id),
    }


def member_entry(job_id: str) -> dict[str, Any] | None:
    """What a batch's snapshot needs of a member Redis has let go (from PostgreSQL)."""
    snap = find_job(job_id)
    if snap is None:
        return None
    return {"status": snap["status"], "progress_percent": snap["progress_percent"],
            "started_at_ms": ms_from_iso(snap.get("started_at")),
            "finished_at_ms": ms_from_iso(snap.get("finished_at"))}


def find_batch(batch_id: str) -> dict[str, Any] | None:
    """The batch's snapshot from Redis, else PostgreSQL's copy of a finished one, else None."""
    snap = progress_store().get_batch(batch_id, find_missing=member_entry)
    if snap is not None:
        if snap["status"] in ("completed", "failed", "canceled"):
            keep_finished_batch(snap)
        return snap
    m = mirror()
    return None if m is None else m.fetch_batch(batch_id)


def keep_finished_batch(snap: dict[str, Any]) -> None:
    """Copy a finished batch to PostgreSQL (once Redis expires it, it is read from there)."""
    m = mirror()
    if m is None:
        return
    try:
        m.save_batch(snap)
    except Exception as exc:  # PostgreSQL down: the next read of the batch tries again
        logger.warning("batch %s: not mirrored yet: %s", snap["batch_id"], exc)


def require_batch(batch_id: str) -> dict[str, Any]:
    snap = find_batch(batch_id)
    if snap is None:
        raise JobNotFound(f"batch {batch_id} not found")
    return snap


@bp.post("/api/v1/batches")
@require_token
def submit_batch():
    body = json_object({"paper_ids", "pipeline", "tags", "name"}, frozenset({"paper_ids"}))
    store = progress_store()
    batch_id, job_ids = worker_jobs().submit_batch(
        store.settings, body["paper_ids"], body.get("pipeline", "video"), tags=body.get("tags") or (),
        name=body.get("name"), store=store, redis_conn=rq_connection())
    answer = {"batch_id": batch_id, "job_ids": job_ids, **batch_urls(batch_id)}
    return jsonify(answer), 202, {"Location": answer["status_url"]}


@bp.get("/api/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(require_batch(validate_id(batch_id, "batch_id")))


@bp.post("/api/v1/batches/<batch_id>/cancel")
@require_token
def cancel_batch(batch_id: str):
    validate_id(batch_id, "batch_id")
    json_object(set())
    store = progress_store()
    canceled = worker_jobs().cancel_batch(store.settings, batch_id, store=store, redis_conn=rq_connection())
    return jsonify({**require_batch(batch_id), "canceled_job_ids": canceled}), 202


@bp.get("/api/v1/batches/<batch_id>/events")
def batch_events(batch_id: str):
    raise JobNotFound("not yet")


@bp.get("/batches/<batch_id>/")
def batch_page(batch_id: str):
    raise JobNotFound("not yet")
