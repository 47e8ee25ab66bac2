"""The pages: ``/`` (the live dashboard of every job) and ``/status/<paper_id>/`` (the paper's latest job, live).

The status page follows the paper's latest job, which after a retry is its latest attempt:
a job that ends failed or canceled keeps the page asking for a newer one (an automatic
retry, or one by request), and the page lists the earlier attempts, each linked to its
snapshot (``attempts`` in the page's config, from ``job_lookup.earlier_attempts``).

``/status/<paper_id>/?_json=1`` is the documented small JSON status of the paper,
the page's fallback when its event stream fails: the page polls it every
``POLL_MS`` and meanwhile tries its stream again, first after
``STREAM_RETRY_MS``, then at doubling intervals up to ``STREAM_RETRY_MAX_MS``
(``web/static/status.js``).
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, render_template, request, url_for

from progress_service.models import validate_id

from .auth import PAPER, read_access
from .job_lookup import (
    earlier_attempts,
    job_history,
    latest_job,
    paper_status,
    progress_store,
    typical_seconds,
    video_url,
    waiting_queue,
)
from .live import STATES, filters_from

bp = Blueprint("pages", __name__)

POLL_MS = 3000  # the fallback's polling interval
STREAM_RETRY_MS = 15_000  # while polling, the first try to reopen the event stream
STREAM_RETRY_MAX_MS = 60_000  # the longest wait between two tries


def _page_config(paper_id: str | None, snapshot, history) -> dict:
    store = progress_store()
    settings = store.settings
    return {
        "paper_id": paper_id,
        "snapshot": snapshot,
        "history": history,
        "server_now_ms": store.server_time_ms(),
        "stale_after": settings.stale_after,
        "pending_stale_after": settings.pending_stale_after,
        # a worker that missed three heartbeats has gone quiet (Settings.heartbeat_interval)
        "heartbeat_fresh_ms": int(3 * settings.heartbeat_interval * 1000),
        "poll_ms": POLL_MS,
        "stream_retry_ms": STREAM_RETRY_MS,
        "stream_retry_max_ms": STREAM_RETRY_MAX_MS,
        "api_jobs_url": url_for("api.list_jobs"),
        "status_json_url": url_for("pages.status_page", paper_id=paper_id, _json=1) if paper_id else None,
        "video_url": video_url(snapshot) if snapshot else None,
        "queue": waiting_queue(snapshot),  # a pending job's RQ queue and its workers, as ?_json=1
        "typical_seconds": typical_seconds(snapshot),  # how long a job of its pipeline takes, as ?_json=1
        # PROGRESS_READ_AUTH=token: the token this page was opened with, which its scripts send
        # on (a header for fetch, ?token= for EventSource and the video); None when reading is open
        "token": g.get("read_token"),
        "attempts": earlier_attempts(snapshot) if snapshot else [],
    }


@bp.get("/")
def index():
    """The live dashboard (web/static/index.js), filtered by ``?status=``, ``?pipeline=``, ``?tag=``."""
    filters = filters_from(request.args)  # a bad filter is a 400 that names it
    config = _page_config(None, None, None)
    config["filters"] = {"status": filters.status, "pipeline": filters.pipeline, "tag": filters.tag}
    config["finished_limit"] = filters.limit
    config["overview_url"] = url_for("live.get_overview")
    config["status_base"] = url_for("pages.status_page", paper_id="_")[:-2]
    config["batch_base"] = url_for("batches.batch_page", batch_id="_")[:-2]
    return render_template("index.html", config=config, states=STATES,
                           token_required=bool(progress_store().settings.api_token))


@bp.get("/status/<paper_id>/")
@read_access(PAPER)
def status_page(paper_id: str):
    validate_id(paper_id, "paper_id")
    if request.args.get("_json", "") not in ("", "0"):
        return jsonify(paper_status(paper_id))
    snapshot = latest_job(paper_id)
    history = job_history(snapshot["job_id"]) if snapshot else []
    config = _page_config(paper_id, snapshot, history)
    if snapshot is not None:
        config["events_url"] = url_for("events.job_events", job_id=snapshot["job_id"])
    return render_template("status.html", paper_id=paper_id, snapshot=snapshot, config=config,
                           queue=config["queue"],
                           pmid=paper_id if paper_id.isdigit() else None,
                           debug=current_app.debug)
