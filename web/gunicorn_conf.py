"""gunicorn settings for the web app: ``gunicorn -c web/gunicorn_conf.py``.

The gevent worker class: an open event stream is a greenlet waiting on a
queue, so one process serves thousands of streams (a sync worker would spend
a whole process on each). gunicorn's gevent worker monkey-patches the worker
process before it loads the app, so redis-py, psycopg, ``threading`` and
``queue`` all yield to the event loop instead of blocking it.

This file is read by the master, which never imports the app (``preload_app``
stays off): each worker builds its own app, its own Redis connections and its
own pub/sub listener after it was forked and patched.

The environment may override: ``PROGRESS_WEB_BIND`` (127.0.0.1:8000),
``PROGRESS_WEB_WORKERS`` (2), ``PROGRESS_WEB_CONNECTIONS`` (open connections
per worker, 4000), ``PROGRESS_WEB_ACCESS_LOG`` (1: log each request),
``PROGRESS_WEB_LOG_LEVEL`` (info: gunicorn's log level, and the app's loggers'
too). gunicorn's command-line flags win over this file: ``progress-service web``
always passes ``--bind`` and ``--workers`` (from its own ``--host``/``--port``/
``--workers``), and ``--log-level debug`` with ``--verbose``.
"""

import re

import gunicorn.glogging
import gunicorn.http.wsgi

from progress_service.config import WebSettings

# The Server header does not advertise gunicorn. gunicorn (since 20.1; tested with 27)
# writes ``Server: <gunicorn.http.wsgi.SERVER>`` itself, and an app's own Server header
# would only be a second one. That module imported ``gunicorn.SERVER`` by value, so
# setting ``gunicorn.SERVER`` here would be too late. The workers, forked from this
# master, inherit the change; SERVER_SOFTWARE (the WSGI environ's) likewise.
SERVER_NAME = "progress-service"
# types-gunicorn declares these two in gunicorn/__init__ only, not wsgi's copies.
gunicorn.http.wsgi.SERVER = SERVER_NAME  # type: ignore[attr-defined]
gunicorn.http.wsgi.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]

_web = WebSettings()  # PROGRESS_WEB_* (not a gunicorn setting: its name starts with _)
wsgi_app = "web:create_app()"
bind = _web.bind
workers = _web.workers
worker_class = "gevent"
worker_connections = _web.connections
preload_app = False
# gevent workers tell the master they are alive from a greenlet of their own,
# so a long-lived stream never counts against this timeout.
timeout = 30
graceful_timeout = 10
keepalive = 5
backlog = 2048


# Tokens stay out of the logs: a read token travels as ?token= (EventSource cannot send a
# header), and a page's own requests carry its URL, token and all, as their Referer.
TOKEN_IN_TEXT = re.compile(r"(?i)(?<![a-z0-9_])(token=)[^&\s\"#;]*")
SECRET_HEADERS = frozenset({"{authorization}i", "{http_authorization}e"})


def redact(text):
    """``text`` with every ``token=<value>`` shown as ``token=***``."""
    return TOKEN_IN_TEXT.sub(r"\1***", text) if isinstance(text, str) else text


class RedactingLogger(gunicorn.glogging.Logger):
    """gunicorn's logger, with ``token=`` values and Authorization headers hidden: in the access
    log's every field (request line, query, Referer, headers, environ) and in its error log's
    messages (an error names the request's URI)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.error_log.addFilter(redact_record)

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            atoms[key] = "***" if key in SECRET_HEADERS and value else redact(value)
        return atoms


def redact_record(record):
    """A ``logging`` filter: the record's message, arguments filled in, with tokens hidden."""
    record.msg, record.args = redact(record.getMessage()), ()
    return True


logger_class = RedactingLogger
accesslog = "-" if _web.access_log else None
errorlog = "-"
loglevel = _web.log_level
proc_name = "progress-service-web"
# gunicorn >= 24's control socket sits at one fixed path per user: two servers on a
# machine (tests, benchmarks) would fight over it. Off; older gunicorns ignore the name.
control_socket_disable = True


def post_fork(server, worker):
    """In each worker, before it loads the app: the app's loggers (web.*, progress_service.*) to stderr,
    tokens hidden (``redact``).

    At gunicorn's effective log level (``--log-level`` wins over ``PROGRESS_WEB_LOG_LEVEL``).
    gunicorn's own loggers do not propagate to the root logger, so nothing is logged twice.

    Import nothing of the app here: this runs before the gevent worker monkey-patches,
    and psycopg picks its wait function when it is imported (a C poll that blocks the
    whole worker, unless ``select`` is patched by then): a PostgreSQL that does not
    answer would then stall every request of the worker (tests/test_partition.py).
    """
    import logging

    logging.basicConfig(
        level=str(worker.cfg.loglevel).upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact_record)  # an app line that names a URL shows no token either


def post_worker_init(worker):
    """Once the worker is patched and has loaded the app: gunicorn's own error answers in
    JSON (``web.gunicorn_errors``); and when the worker is told to stop, its event streams
    end at once.

    Otherwise every open stream would hold the worker for ``graceful_timeout``.
    A client reconnects to a worker that is up: a plain ``EventSource`` by
    itself, a few seconds later, with ``Last-Event-ID`` (``web.events``); the
    status page (``static/status.js``) closes its stream instead, polls at once
    and opens the stream again later (``web.fanout.EventHub.close``).
    """
    import threading
    import time

    from web.gunicorn_errors import answer_errors_in_json

    answer_errors_in_json()  # a malformed request gunicorn refuses itself gets a JSON error too

    hub = getattr(worker.wsgi, "extensions", {}).get("progress_events")
    if hub is None:
        return

    def end_streams_on_exit():
        while worker.alive:
            time.sleep(0.5)
        hub.close()

    threading.Thread(target=end_streams_on_exit, name="progress-streams-exit", daemon=True).start()
