"""The JSON API (``/api/v1``): submit, read, list, cancel and retry jobs, take a producer's progress,
serve a job's video, and list the pipelines.

Reading is open unless ``PROGRESS_READ_AUTH=token`` (then each reading view
declares what it needs with ``read_access``); writing needs the bearer token
when ``PROGRESS_API_TOKEN`` is set (``web.auth``). Errors are raised, never answered here: ``web.errors``
turns them into JSON with the right status code.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, send_file, url_for

from progress_service import queue, retries
from progress_service.errors import InvalidInput, JobNotFound, Unauthorized
from progress_service.models import Status, validate_id, validate_steps, validate_tags
from progress_service.pipeline_workers import worker_support
from progress_service.pipelines import describe_pipeline, load_pipelines
from progress_service.tracking import TRACKED_PIPELINE

from . import read_tokens
from .auth import JOB, api_token, read_access, require_token
from .job_lookup import find_job, progress_store, recent_jobs, require_job, video_file
from .job_lookup import job_history as find_history

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
STATUSES = tuple(s.value for s in Status)
TRACKED_FIELDS = ("enqueue", "steps")  # a submit that creates a tracked job
UPDATE_FIELDS = {"progress_percent", "current_step", "status", "message", "error", "result", "force"}


def json_object(allowed: set[str], required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The request body as a JSON object with only ``allowed`` fields (an empty body is ``{}``)."""
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except ValueError as exc:  # also a body that is not UTF-8
            raise InvalidInput(f"the body must be a JSON object: {exc}") from None
        except RecursionError:  # "[[[[..." nested past the interpreter's limit
            raise InvalidInput("the body must be a JSON object, not nested thousands deep") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise InvalidInput(f"unknown field {unknown[0]!r} (allowed: {names})")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidInput(f"field {missing[0]!r} is required")
    return body


def urls_of(job_id: str, paper_id: str, read_token: str | None = None) -> dict[str, str]:
    """A job's URLs; with a read token, the page's carries it (``?token=``) for whoever opens it."""
    return {
        "status_url": url_for("api.get_job", job_id=job_id),
        "events_url": url_for("events.job_events", job_id=job_id),
        "page_url": url_for("pages.status_page", paper_id=paper_id, token=read_token),  # None: left out
    }


def submit_answer(job_id: str, paper_id: str) -> dict[str, str]:
    """A submit's answer: the job's id and URLs; under read auth also its ``read_token``, which
    ``page_url`` carries."""
    read_token = read_tokens.for_answer(progress_store().settings, "job", job_id)
    answer = {"job_id": job_id, **urls_of(job_id, paper_id, read_token)}
    if read_token:
        answer["read_token"] = read_token
    return answer


def rq_connection():
    """The (bytes-mode) Redis client RQ uses for the queue, built once per app."""
    ext = current_app.extensions
    if "progress_rq" not in ext:
        ext["progress_rq"] = queue.rq_connection(progress_store().settings)
    return ext["progress_rq"]


def run_cancel(cancel, target_id: str, field: str):
    """A cancel request's common part: ``target_id`` checked as ``field``, the body an empty
    JSON object (or none), then ``cancel`` (``queue.cancel_job`` or ``queue.cancel_batch``)
    run on it; returns what ``cancel`` returns."""
    validate_id(target_id, field)
    json_object(set())
    store = progress_store()
    return cancel(store.settings, target_id, store=store, redis_conn=rq_connection())


@bp.post("/jobs")
@require_token
def submit_job():
    body = json_object({"paper_id", "pipeline", "tags", "retries", *TRACKED_FIELDS}, frozenset({"paper_id"}))
    if "steps" in body or body.get("enqueue", True) is not True:
        if "retries" in body:
            raise InvalidInput('"retries" goes with a queued job: a tracked job ("enqueue": false) is '
                               "run by no worker, so nothing retries it")
        return create_tracked_job(body)
    paper_id = validate_id(body["paper_id"], "paper_id")
    pipeline = validate_id(body.get("pipeline", "video"), "pipeline")
    tags = validate_tags(body.get("tags"))
    retry_count = queue.validate_retries(body.get("retries", 0))
    store = progress_store()
    job_id = queue.submit_job(store.settings, paper_id, pipeline, store=store,
                              redis_conn=rq_connection(), tags=tags, retries=retry_count)
    answer = submit_answer(job_id, paper_id)
    return jsonify(answer), 202, {"Location": answer["status_url"]}


def create_tracked_job(body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
    """``"enqueue": false`` with ``"steps"``: a job no worker runs, that a producer elsewhere
    reports on (``POST /jobs/<job_id>/progress``, or ``store.track`` in Python)."""
    enqueue = body.get("enqueue", True)
    if not isinstance(enqueue, bool):
        raise InvalidInput(f"enqueue must be true or false, got {enqueue!r}")
    if enqueue:
        raise InvalidInput('"steps" go with "enqueue": false: a tracked job no worker runs')
    if "steps" not in body:
        raise InvalidInput('"enqueue": false needs "steps": the names of the job\'s steps, in order')
    paper_id = validate_id(body["paper_id"], "paper_id")
    pipeline = validate_id(body.get("pipeline", TRACKED_PIPELINE), "pipeline")
    tags = validate_tags(body.get("tags"))
    job_id = uuid.uuid4().hex
    progress_store().create_job(job_id, paper_id, steps=validate_steps(body["steps"]),
                                pipeline=pipeline, tags=tags)
    answer = submit_answer(job_id, paper_id)
    return jsonify(answer), 202, {"Location": answer["status_url"]}


@bp.post("/jobs/<job_id>/progress")
@require_token
def report_progress(job_id: str) -> Response:
    """One update through the store's Lua script, for producers that are not Python; every
    call (``{}`` too) is also the job's heartbeat, so the worker-lost sweeper leaves it be."""
    validate_id(job_id, "job_id")
    fields = json_object(UPDATE_FIELDS)
    if not isinstance(fields.get("force", False), bool):
        raise InvalidInput(f"force must be true or false, got {fields['force']!r}")
    store = progress_store()
    result = store.update(job_id, **fields)
    if result.reason == "not_found":
        raise JobNotFound(f"job {job_id} not found")
    store.heartbeat(job_id)
    return jsonify(accepted=result.accepted, reason=result.reason, seq=result.seq)


@bp.get("/jobs")
def list_jobs():
    args = request.args
    known = ("paper_id", "status", "tag", "batch_id", "limit", "token")  # token: web.auth's
    unknown = sorted(k for k in args if k not in known and not k.startswith("_"))
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(known)})")
    paper_id, tag, batch_id = (args.get(name) or None for name in ("paper_id", "tag", "batch_id"))
    for name, value in (("paper_id", paper_id), ("tag", tag), ("batch_id", batch_id)):
        if value is not None:
            validate_id(value, name)
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    raw_limit = args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit}")
    jobs, missing = recent_jobs(paper_id, status, limit, tag=tag, batch_id=batch_id)
    headers = {"Warning": f'199 - "{missing}"'} if missing else {}
    return jsonify(jobs=jobs), 200, headers


@bp.get("/pipelines")
def list_pipelines():
    """Every pipeline this web process can submit, and whether the queue's live workers know it
    (with the same steps): a submit is refused when one of them does not (``workers.knowing`` <
    ``workers.live``); with no live worker it is queued."""
    store = progress_store()
    registry = load_pipelines(store.settings)
    live, knowing = worker_support(rq_connection(), store.settings, registry)
    pipelines = [{**describe_pipeline(p), "workers": {"live": live, "knowing": knowing[name]},
                  "known_to_workers": knowing[name] == live if live else None}
                 for name, p in registry.items()]
    return jsonify(pipelines=pipelines, queue=store.settings.queue_name, live_workers=live)


@bp.get("/jobs/<job_id>")
@read_access(JOB)
def get_job(job_id: str):
    return jsonify(require_job(job_id))


@bp.get("/jobs/<job_id>/history")
@read_access(JOB)
def job_history(job_id: str):
    return jsonify(find_history(job_id))


@bp.post("/jobs/<job_id>/cancel")
@require_token
def cancel_job(job_id: str):
    outcome = run_cancel(queue.cancel_job, job_id, "job_id")
    answer = dict(outcome or {})
    answer.setdefault("job_id", job_id)
    answer.setdefault("status_url", url_for("api.get_job", job_id=job_id))
    return jsonify(answer), 202


@bp.post("/jobs/<job_id>/retry")
@require_token
def retry_job(job_id: str):
    """A new attempt of a failed or canceled job (202, a submit's answer plus ``attempt`` and
    ``retry_of``), resuming after its completed steps where the pipeline is resumable; 409 for
    a job in another state or retried already; works for a job only PostgreSQL still keeps."""
    validate_id(job_id, "job_id")
    json_object(set())
    store = progress_store()
    new_id = retries.retry_job(store.settings, job_id, store=store, redis_conn=rq_connection(),
                               find=find_job)
    snap = require_job(new_id)
    answer = {**submit_answer(new_id, snap["paper_id"]), "attempt": snap["attempt"], "retry_of": job_id}
    return jsonify(answer), 202, {"Location": answer["status_url"]}


@bp.get("/jobs/<job_id>/video")
@read_access(JOB)
def job_video(job_id: str):
    snap = require_job(job_id)
    path = video_file(snap)
    if path is None:
        raise JobNotFound(f"job {job_id} has no video (status {snap['status']})")
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=0,
                     download_name=path.name)


@bp.post("/tokens")
@require_token
def create_read_token():
    """Mint a read token for one job (``{"job_id"}``) or one batch (``{"batch_id"}``), ``ttl`` seconds.

    Only with the API token: with none configured nobody mints (else anyone could read
    anything); a submit's answer still carries its new job's token.
    """
    if not api_token():
        raise Unauthorized("minting a read token needs the API token, and PROGRESS_API_TOKEN is not set")
    body = json_object({"job_id", "batch_id", "ttl"})
    kinds = [kind for kind in read_tokens.KINDS if f"{kind}_id" in body]
    if len(kinds) != 1:
        raise InvalidInput("give either 'job_id' or 'batch_id'")
    kind = kinds[0]
    scope_id = validate_id(body[f"{kind}_id"], f"{kind}_id")
    ttl = read_tokens.ttl_seconds(body.get("ttl"))
    store = progress_store()
    if kind == "job" and find_job(scope_id) is None:
        raise JobNotFound(f"job {scope_id} not found")
    if store.settings.secret_key is None:
        raise InvalidInput("read tokens need PROGRESS_SECRET_KEY, which is not set")
    token, scope = read_tokens.mint(store.settings.secret_key, kind, scope_id, ttl=ttl)
    return jsonify(read_token=token, expires_at=scope.expires_at), 201
