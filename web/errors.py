"""The one error handler: every error becomes ``{"error": "<what>", "detail": "..."}``.

``progress_service.errors`` maps to status codes here and nowhere else:
InvalidInput 400, Unauthorized 401, JobNotFound 404, JobConflict 409,
BackendUnavailable 503 (so does a Redis connection error that slipped past the
store). Flask's own errors (404, 405, 413, ...) keep their codes. Under
``/api/``, for ``?_json=1`` and for a 401 the answer is JSON; a page gets a small HTML page.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, render_template, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from progress_service.errors import (
    BackendUnavailable,
    InvalidInput,
    JobConflict,
    JobNotFound,
    ProgressError,
    Unauthorized,
)

logger = logging.getLogger(__name__)

STATUS = {
    InvalidInput: 400,
    Unauthorized: 401,
    JobNotFound: 404,
    JobConflict: 409,
    BackendUnavailable: 503,
}


def wants_json() -> bool:
    path = request.path
    return (
        path.startswith("/api/")
        or path in ("/healthz", "/metrics")
        or request.args.get("_json", "") not in ("", "0")
    )


def error_code(name: str | None) -> str:
    """A status's name as an error code: "Method Not Allowed" -> "method_not_allowed"."""
    return re.sub(r"[^a-z0-9]+", "_", (name or "error").lower()).strip("_") or "error"


def describe(exc: BaseException) -> tuple[int, str, str]:
    """(status code, what, detail) of an error."""
    for cls, status in STATUS.items():
        if isinstance(exc, cls):
            return status, cls.code, str(exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return 503, BackendUnavailable.code, f"redis: {exc}"
    if isinstance(exc, HTTPException):
        return exc.code or 500, error_code(exc.name), exc.description or exc.name
    if isinstance(exc, ProgressError):
        return 500, exc.code, str(exc)
    return 500, "internal_error", "the server failed to answer; the log says why"


def handle_error(exc: Exception):
    status, what, detail = describe(exc)
    if status >= 500 and status != 503:
        logger.exception("%s %s failed", request.method, request.path)
    headers = {}
    if status == 401 and not isinstance(exc, HTTPException):
        headers["WWW-Authenticate"] = 'Bearer realm="progress-service"'
    if status == 503:
        headers["Retry-After"] = "5"
    allowed = getattr(exc, "valid_methods", None)
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    if wants_json() or isinstance(exc, Unauthorized):  # a missing token is a JSON 401 everywhere (README, "HTTP API and events")
        return jsonify(error=what, detail=detail), status, headers
    page = render_template("error.html", status=status, what=what, detail=detail)
    return page, status, headers


def register(app: Flask) -> None:
    app.register_error_handler(Exception, handle_error)
