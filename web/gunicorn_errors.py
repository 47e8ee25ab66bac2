"""gunicorn's own error answers in the documented JSON error shape (adapter to gunicorn internals).

gunicorn answers some requests itself, before the app sees them: a malformed request
line or header (400), a request line over ``--limit-request-line`` (414), headers over
``--limit-request-fields`` / ``--limit-request-field_size`` (431), a transfer coding it
does not know (501), a broken chunked body (400). It writes those answers with
``gunicorn.util.write_error``, which builds a small HTML page, and it has no setting to
change that page (benoitc/gunicorn#993, still the case in gunicorn 23-27).

``answer_errors_in_json()``, called in each worker after the fork (``gunicorn_conf``),
puts ``write_json_error`` in its place: the same status line, as
``{"error": "<what>", "detail": "<gunicorn's message>"}`` with the no-cache headers of
every JSON answer. What relies on gunicorn's internals is here alone:

- ``gunicorn.util.write_error(sock, status_int, reason, mesg)``, the one function the
  worker's ``handle_error`` calls to answer (looked up on the module at each call,
  so replacing the module attribute takes effect), the same from gunicorn 19 to 27;
- ``gunicorn.util.write_nonblock(sock, data)``, which it uses to send the bytes.

What still cannot be JSON: a connection gunicorn closes without an answer (the client
sent nothing complete before ``--keep-alive`` or the worker's timeout ran out, or went
away), and a worker the master kills (``--timeout``): the client sees the connection
close, with no status at all.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """What ``gunicorn.util.write_error`` does, with a JSON body instead of an HTML page."""
    from gunicorn import util

    from . import NO_CACHE_ITEMS
    from .errors import error_code

    body = json.dumps({"error": error_code(reason), "detail": mesg or reason}).encode("ascii")
    head = [f"HTTP/1.1 {status_int} {reason}", "Connection: close",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in NO_CACHE_ITEMS]
    util.write_nonblock(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def answer_errors_in_json() -> None:
    """In this (worker) process, gunicorn's own error answers are JSON from now on."""
    from gunicorn import util

    if not callable(getattr(util, "write_error", None)) or not callable(
            getattr(util, "write_nonblock", None)):
        logger.warning("this gunicorn has no util.write_error: its own error pages stay HTML")
        return
    util.write_error = write_json_error
