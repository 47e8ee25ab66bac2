"""Reading jobs for the web: Redis first, the PostgreSQL mirror once Redis has let go.

Shared by the JSON API, the event stream and the pages, so each answers the
same way for an expired job, an unknown paper or a job's video.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import current_app, url_for

from progress_service import queue
from progress_service.errors import BackendUnavailable, JobNotFound, ProgressError
from progress_service.models import TERMINAL_VALUES, Status, validate_id
from progress_service.store import ProgressStore

if TYPE_CHECKING:
    from progress_service.mirror import Mirror

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".webm", ".mov"})
# A read answers within 3 s even while PostgreSQL is partitioned away: each PostgreSQL
# access gets MIRROR_TIMEOUT seconds in all (connecting included, at libpq's 2 s floor),
# and for MIRROR_RECHECK_AFTER seconds after one got no answer the others fail at once.
MIRROR_TIMEOUT = 2.2
MIRROR_CONNECT_TIMEOUT = 2
MIRROR_RECHECK_AFTER = 2.0


def progress_store() -> ProgressStore:
    return current_app.extensions["progress"]


def mirror() -> Mirror:
    """The app's PostgreSQL mirror (``progress_service.mirror.Mirror``), built on first use."""
    ext = current_app.extensions
    if "progress_mirror" not in ext:
        # Imported here, on a request: psycopg picks how it waits when it is imported, and
        # under gunicorn's gevent worker that must come after the monkey-patching.
        from progress_service.mirror import Mirror

        store = progress_store()
        ext["progress_mirror"] = Mirror(store, store.settings.database_url,
                                        connect_timeout=MIRROR_CONNECT_TIMEOUT,
                                        timeout=MIRROR_TIMEOUT,
                                        recheck_after=MIRROR_RECHECK_AFTER)
    return ext["progress_mirror"]


def find_job(job_id: str) -> dict[str, Any] | None:
    """The job's snapshot from Redis, else from PostgreSQL, else None.

    Raises ``BackendUnavailable`` when Redis is down, or when Redis does not
    hold the job and PostgreSQL, which might, does not answer.
    """
    snap = progress_store().get(job_id)  # validates the id
    if snap is not None:
        return snap
    record = mirror_record(job_id)
    if record is None:
        return None
    snap = {k: v for k, v in record.items() if k not in ("history", "mirrored_at")}
    snap.setdefault("is_stale", False)  # a finished job is never stale
    snap.setdefault("eta_seconds", None)
    snap.setdefault("eta_source", None)
    return snap


def mirror_record(job_id: str) -> dict[str, Any] | None:
    """The job as PostgreSQL keeps it (a snapshot, perhaps with its ``history``), or None."""
    try:
        return mirror().fetch(job_id)
    except ProgressError:
        raise
    except Exception as exc:  # psycopg's errors, without importing psycopg here
        if type(exc).__module__.startswith("psycopg"):
            raise BackendUnavailable(f"postgres: {exc}") from exc
        raise


def job_history(job_id: str) -> list[dict[str, Any]]:
    """The job's history from Redis, else from PostgreSQL; ``JobNotFound`` if neither knows it."""
    validate_id(job_id, "job_id")
    entries = progress_store().history(job_id)
    if entries:
        return entries
    if progress_store().get(job_id) is not None:
        return []
    record = mirror_record(job_id)
    if record is None:
        raise JobNotFound(f"job {job_id} not found")
    return list(record.get("history") or [])


def require_job(job_id: str) -> dict[str, Any]:
    snap = find_job(job_id)
    if snap is None:
        raise JobNotFound(f"job {job_id} not found")
    return snap


def latest_job(paper_id: str) -> dict[str, Any] | None:
    """The paper's latest job (Redis' per-paper index, then the snapshot from Redis or PostgreSQL)."""
    validate_id(paper_id, "paper_id")
    job_id = progress_store().latest_job_id(paper_id)
    return None if job_id is None else find_job(job_id)


MAX_ATTEMPTS_SHOWN = 20  # earlier attempts a page lists


def earlier_attempts(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts before ``snapshot``'s job, newest first, followed back through ``retry_of``
    (Redis, then PostgreSQL; at most ``MAX_ATTEMPTS_SHOWN``): each its ``job_id``, ``attempt``,
    ``status``, ``error``, ``finished_at`` and ``url`` (its snapshot). One neither keeps (or
    PostgreSQL not answering) ends the list with what is known of it: its id and number."""
    out: list[dict[str, Any]] = []
    seen = {snapshot["job_id"]}
    current = snapshot
    while current.get("retry_of") and len(out) < MAX_ATTEMPTS_SHOWN:
        job_id = current["retry_of"]
        if job_id in seen:
            break
        seen.add(job_id)
        try:
            found = find_job(job_id)
        except BackendUnavailable:
            found = None
        entry = {"job_id": job_id, "attempt": int(current.get("attempt") or 2) - 1, "status": None,
                 "error": None, "finished_at": None, "url": url_for("api.get_job", job_id=job_id)}
        if found is None:
            out.append(entry)
            break
        entry.update((k, found.get(k)) for k in ("attempt", "status", "error", "finished_at"))
        out.append(entry)
        current = found
    return out


def video_file(snapshot: dict[str, Any]) -> Path | None:
    """The video a completed job's result names (``video_path``), if it is a file that exists.

    Only a path named in the job's own result is ever served: nothing from the
    request reaches the file system.
    """
    if snapshot.get("status") != Status.COMPLETED.value:
        return None
    result = snapshot.get("result") or {}
    raw = result.get("video_path")
    if not raw and isinstance(result.get("video_url"), str) and result["video_url"].startswith("file://"):
        raw = urlsplit(result["video_url"]).path
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw)
    if not path.is_absolute() or path.suffix.lower() not in VIDEO_SUFFIXES:
        return None
    return path if path.is_file() else None


def video_url(snapshot: dict[str, Any]) -> str | None:
    """Where a browser gets the job's video: our own route, or a web URL the result names."""
    if snapshot.get("status") != Status.COMPLETED.value:
        return None
    result = snapshot.get("result") or {}
    if video_file(snapshot) is not None:
        return url_for("api.job_video", job_id=snapshot["job_id"])
    web = result.get("video_url")
    if isinstance(web, str) and web.startswith(("http://", "https://")):
        return web
    return None


def waiting_queue(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """For a pending job that waits in an RQ queue: ``{"name", "workers"}``, how many workers
    listen there (``progress_service.queue.waiting_queue``); else None, also when RQ cannot be asked."""
    if snapshot is None or snapshot.get("status") != Status.PENDING.value:
        return None
    from .api import rq_connection

    try:
        return queue.waiting_queue(snapshot["job_id"], rq_connection())
    except Exception as exc:  # redis' errors, or no RQ installed: the page does without the fact
        logger.warning("job %s: RQ's queue not read: %s", snapshot["job_id"], exc)
        return None


def typical_seconds(snapshot: dict[str, Any] | None) -> float | None:
    """How long a job of the snapshot's pipeline typically takes (the p50 of its latest completed
    jobs, ``progress_service.step_stats``), or None where none is known."""
    if snapshot is None:
        return None
    try:
        stats = progress_store().step_stats(snapshot.get("pipeline"))
    except BackendUnavailable:
        return None
    typical = None if stats is None else stats.typical_job
    return None if typical is None else round(typical, 1)


def paper_status(paper_id: str) -> dict[str, Any]:
    """The documented ``/status/<paper_id>/?_json=1`` answer for the paper's latest job.

    An unknown paper is not an error: ``exists`` is false and the rest null (or
    empty), so a page opened before the job was submitted can keep polling. One
    field beyond the documented ones: ``queue``, :func:`waiting_queue` (null unless the job
    waits in an RQ queue), so the page can say that no worker listens there; and
    ``typical_seconds`` (:func:`typical_seconds`), so a page can say how long a job takes.
    """
    validate_id(paper_id, "paper_id")
    snap = latest_job(paper_id)
    out: dict[str, Any] = {
        "paper_id": paper_id,
        "pmid": paper_id if paper_id.isdigit() else None,
        "exists": snap is not None,
        "status": None,
        "current_step": None,
        "completed_steps": [],
        "progress_percent": None,
        "progress_updated_at": None,
        "is_stale": False,
        "final_video": None,
        "final_video_url": None,
        "job_id": None,
        "queue": None,
        "typical_seconds": None,
    }
    if snap is None:
        return out
    video = video_file(snap)
    out.update(
        status=snap["status"],
        current_step=snap["current_step"],
        completed_steps=snap["completed_steps"],
        progress_percent=snap["progress_percent"],
        progress_updated_at=snap["progress_updated_at"],
        is_stale=snap["is_stale"],
        final_video=video.name if video is not None else None,
        final_video_url=video_url(snap),
        job_id=snap["job_id"],
        queue=waiting_queue(snap),
        typical_seconds=typical_seconds(snap),
    )
    return out


def recent_jobs(paper_id: str | None = None, status: str | None = None,
                limit: int = 50, *, tag: str | None = None,
                batch_id: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Snapshots newest first: Redis' jobs, then PostgreSQL's finished ones Redis has expired.

    Returns (jobs, what is missing): with PostgreSQL down the list comes from
    Redis alone, and the second value says so (the API sends it as a Warning).
    """
    jobs = progress_store().list_jobs(paper_id=paper_id, status=status, limit=limit, tag=tag,
                                      batch_id=batch_id)
    if len(jobs) >= limit or (status is not None and status not in TERMINAL_VALUES):
        return jobs, None
    try:
        older = mirror().list_jobs(paper_id=paper_id, status=status, limit=limit, tag=tag,
                                   batch_id=batch_id)
    except BackendUnavailable as exc:
        logger.warning("jobs: PostgreSQL unavailable, listing from Redis alone: %s", exc)
        return jobs, "PostgreSQL is unavailable: finished jobs that Redis has expired are missing"
    seen = {j["job_id"] for j in jobs}
    merged = jobs + [j for j in older if j["job_id"] not in seen]
    merged.sort(key=lambda j: (j.get("created_at") or "", j["job_id"]), reverse=True)
    return merged[:limit], None
