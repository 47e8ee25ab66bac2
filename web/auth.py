"""Who may write, who may read, and who may see the RQ dashboard.

Writing: with no API token (``PROGRESS_API_TOKEN``) set everything is open.
With one, a writing endpoint needs ``Authorization: Bearer <token>``; the RQ
dashboard takes the same bearer token, or, for a browser, the token as the
password of HTTP Basic auth (any user name).

Reading (``guard_reads``, before every request): with ``PROGRESS_READ_AUTH=open``
(the default) reading needs nothing. With ``token`` every GET and HEAD needs
the API token or a read token (``web.read_tokens``), as ``Authorization:
Bearer <token>`` or ``?token=<token>`` (EventSource and ``<video src>`` cannot
send headers). What a route needs is declared on its view with
``read_access(...)``, and a route that declares nothing needs the API token:
a new route is closed until its author says otherwise.

- ``OPEN``: nothing (``/healthz``, ``/metrics``, the OpenAPI document, static files);
- ``JOB``: a read token of the route's ``job_id``, or of the batch that job belongs to;
- ``BATCH``: a read token of the route's ``batch_id``;
- ``PAPER``: a read token of the paper's latest job (or of that job's batch):
  ``/status/<paper_id>/`` shows that job, so its page is readable with that
  job's token, and stops being so once a newer job of the paper exists.
- nothing declared (lists, the index page, the RQ dashboard): the API token alone.

A read token never writes: writes check the API token alone (``require_token``).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, request

from progress_service.errors import Unauthorized
from progress_service.models import is_valid_id

from . import read_tokens
from .job_lookup import find_job, latest_job

REALM = "progress-service"
ViewT = TypeVar("ViewT", bound=Callable[..., Any])


OPEN, JOB, BATCH, PAPER = "open", "job", "batch", "paper"
READ_METHODS = frozenset({"GET", "HEAD"})  # OPTIONS (a CORS preflight) carries no credentials
OPEN_ENDPOINTS = frozenset({"static"})  # Flask's own static route, which no decorator reaches
DASHBOARD = "rq_dashboard."  # its blueprint's endpoints: dashboard_guard decides


def api_token() -> str | None:
    return current_app.extensions["progress"].settings.api_token


def read_access(kind: str) -> Callable[[ViewT], ViewT]:
    """Declare what reading a view needs under ``PROGRESS_READ_AUTH=token``: ``OPEN``, ``JOB``,
    ``BATCH`` or ``PAPER`` (module docstring). Put it under the route decorator."""
    if kind not in (OPEN, JOB, BATCH, PAPER):
        raise ValueError(f"unknown read access {kind!r}")

    def mark(view: ViewT) -> ViewT:
        view.read_access = kind  # type: ignore[attr-defined]  # read by access_of
        return view

    return mark


def access_of(endpoint: str) -> str | None:
    """What reading ``endpoint`` needs: one of the kinds above, or None (the API token)."""
    if endpoint in OPEN_ENDPOINTS:
        return OPEN
    return getattr(current_app.view_functions.get(endpoint), "read_access", None)


def presented_token() -> str | None:
    """The token of this request: a bearer token, else ``?token=``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    return request.args.get("token") or None


def guard_reads() -> Response | None:
    """``before_request`` of the app: under ``PROGRESS_READ_AUTH=token``, a read without the
    API token or a read token that covers it is a 401 (module docstring)."""
    settings = current_app.extensions["progress"].settings
    endpoint = request.endpoint
    if not settings.reads_need_token or request.method not in READ_METHODS or endpoint is None:
        return None  # open reading, a write (require_token's), or no route (a 404 or 405)
    if endpoint.startswith(DASHBOARD):
        return None  # dashboard_guard, registered on its blueprint, asks for the API token
    kind = access_of(endpoint)
    if kind == OPEN:
        return None
    token = presented_token()
    if token is None:
        raise Unauthorized("reading needs a token (PROGRESS_READ_AUTH=token): "
                           "'Authorization: Bearer <token>' or '?token=<token>'")
    g.read_token = token  # a page passes it on to its own requests
    if settings.api_token and _same(token, settings.api_token):
        return None
    if kind is None:
        raise Unauthorized("this needs the API token: a read token reads its job or batch, never a list")
    scope = read_tokens.verify(settings.secret_key, token)
    if not allows(scope, kind, request.view_args or {}):
        raise Unauthorized(f"the read token is for {scope.describe()}, not this")
    return None


def allows(scope: read_tokens.ReadScope, kind: str, view_args: dict[str, Any]) -> bool:
    """Whether ``scope`` covers a route of ``kind`` with these arguments."""
    if kind == BATCH:
        return scope.kind == "batch" and view_args.get("batch_id") == scope.id
    if kind == JOB:
        job_id = view_args.get("job_id")
        if scope.kind == "job":
            return job_id == scope.id
        return is_valid_id(job_id) and job_in_scope(scope, find_job(job_id))
    if kind == PAPER:
        paper_id = view_args.get("paper_id")
        return is_valid_id(paper_id) and job_in_scope(scope, latest_job(paper_id))
    return False


def job_in_scope(scope: read_tokens.ReadScope, snapshot: dict[str, Any] | None) -> bool:
    """Whether ``scope`` covers this job: it is the token's job, or a member of the token's batch
    (its snapshot's ``batch_id``)."""
    if snapshot is None:
        return False
    if scope.kind == "job":
        return snapshot["job_id"] == scope.id
    return snapshot.get("batch_id") == scope.id


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def bearer_ok(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and _same(given.strip(), token)


def basic_ok(token: str) -> bool:
    auth = request.authorization
    return auth is not None and auth.type == "basic" and _same(auth.password or "", token)


def require_token(view):
    """Decorator for writing views: 401 unless the bearer token matches (when one is set)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        token = api_token()
        if token and not bearer_ok(token):
            if "Authorization" in request.headers:
                raise Unauthorized("the bearer token is wrong")
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>' (PROGRESS_API_TOKEN is set)")
        return view(*args, **kwargs)

    return wrapped


def dashboard_guard() -> Response | None:
    """``before_request`` for the RQ dashboard: bearer token or Basic password, else a Basic challenge.

    With no API token it is open, unless reading needs a token (``PROGRESS_READ_AUTH=token``):
    then it is closed, since it lists every job and only the API token may read lists.
    """
    token = api_token()
    if not token:
        if not current_app.extensions["progress"].settings.reads_need_token:
            return None
    elif bearer_ok(token) or basic_ok(token):
        return None
    return Response(
        "The RQ dashboard needs the API token: as a bearer token, or as the password of "
        "HTTP Basic auth (any user name).\n",
        401,
        {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"', "Content-Type": "text/plain; charset=utf-8"},
    )
