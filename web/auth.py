"""The API token (``PROGRESS_API_TOKEN``): who may write, and who may see the RQ dashboard.

With no token set everything is open. With one, a writing endpoint needs
``Authorization: Bearer <token>``; the RQ dashboard takes the same bearer
token, or, for a browser, the token as the password of HTTP Basic auth (any
user name).
"""

from __future__ import annotations

import functools
import hmac

from flask import Response, current_app, request

from progress_service.errors import Unauthorized

REALM = "progress-service"


def api_token() -> str | None:
    return current_app.extensions["progress"].settings.api_token


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
    """``before_request`` for the RQ dashboard: bearer token or Basic password, else a Basic challenge."""
    token = api_token()
    if not token or bearer_ok(token) or basic_ok(token):
        return None
    return Response(
        "The RQ dashboard needs the API token: as a bearer token, or as the password of "
        "HTTP Basic auth (any user name).\n",
        401,
        {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"', "Content-Type": "text/plain; charset=utf-8"},
    )
