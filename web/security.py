"""The hardened edge: security headers on every answer, and writes that a browser cannot forge cross-site.

Headers (``add_headers``, after every request): ``X-Content-Type-Options:
nosniff``, ``Referrer-Policy: same-origin``, ``X-Frame-Options: DENY`` and a
Content-Security-Policy: ``PAGE_CSP`` on HTML (scripts only from our own
static files, no inline script or handler, no framing), ``DATA_CSP`` (no
framing) on everything else. The RQ dashboard sets its own (``web.dashboard``).

Reads from anywhere (``add_headers``): a GET or HEAD under ``/api/`` (JSON, event
streams, a video, errors too) and our static files (``progress-client.js``, for a
page elsewhere to import) carry ``Access-Control-Allow-Origin: *``, so a page of
another site can follow a job. Reads are public (``PROGRESS_READ_AUTH=open``), or
need a token the page sends itself (``?token=``): no cookie is involved, so ``*``
gives nothing away. Writes get no CORS header: a browser never lets a page
elsewhere read their answers, and ``guard_writes`` refuses them.

Writes (``guard_writes``, before every request): a browser marks where a
request comes from (``Sec-Fetch-Site``, else ``Origin``); a state-changing
request from another site is a 403. A client that sends neither (curl, a
script) is not a browser and is let through. A write under ``/api/`` takes a
JSON body or none at all (``require_json_body``): a form or ``text/plain``
body, which a page elsewhere can send without asking CORS, is a 415.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, request
from werkzeug.exceptions import Forbidden, UnsupportedMediaType

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
API_PREFIX = "/api/"
READ_METHODS = frozenset({"GET", "HEAD"})
SAME_ORIGIN = frozenset({"same-origin", "none"})  # Sec-Fetch-Site "none": typed in, a bookmark

PAGE_CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' http: https:",  # a result's video may live on another web server
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# JSON, event streams, files: never rendered as a page (nosniff), so the frame policy is what counts.
# (A stricter default-src 'none' would also stop a page of ours opened on such an answer, e.g. a
# browser's JSON view, from opening this origin's event stream.)
DATA_CSP = "frame-ancestors 'none'"
HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)


def add_headers(response: Response) -> Response:
    headers = response.headers
    for name, value in HEADERS:
        headers[name] = value
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = PAGE_CSP if response.mimetype == "text/html" else DATA_CSP
    if request.method in READ_METHODS and (request.path.startswith(API_PREFIX)
                                           or request.endpoint == "static"):
        headers["Access-Control-Allow-Origin"] = "*"
    return response


def cross_site() -> bool:
    """Whether a browser sent this request from a page of another origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in SAME_ORIGIN
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser (browsers send Origin with every POST)
    return origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()


def guard_writes() -> None:
    """``before_request`` of the app: a write from another site is a 403; one under ``/api/``
    with a body that is not JSON, a 415.

    The whole of ``/api/`` (not one blueprint) so that a write endpoint added
    anywhere under it is covered. ``/rq/`` posts forms of its own: it gets the
    cross-site check alone.
    """
    if request.method in SAFE_METHODS:
        return
    if cross_site():
        raise Forbidden(f"a {request.method} from another site is refused: "
                        "write from this site's pages or from a client that is not a browser")
    if request.path.startswith(API_PREFIX):
        require_json_body()


def require_json_body() -> None:
    """A write's body is JSON, or there is none (and no form type), else a 415.

    A browser sends ``text/plain``, ``application/x-www-form-urlencoded`` and
    ``multipart/form-data`` (and a POST with no body) cross-site without a CORS
    preflight; ``application/json`` it does not.
    """
    mimetype = request.mimetype  # "" when there is no Content-Type
    has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if mimetype == JSON_TYPE or (not mimetype and not has_body):
        return
    raise UnsupportedMediaType(
        f"a write takes an {JSON_TYPE} body, or none; got "
        + (f"Content-Type {mimetype!r}" if mimetype else "a body without a Content-Type"))
