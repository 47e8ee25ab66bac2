"""The RQ dashboard (rq-dashboard's blueprint) at ``/rq/``, behind the API token when one is set.

rq-dashboard reads its Redis from ``RQ_DASHBOARD_REDIS_URL`` in the app's
config; ``setup_rq_connection`` turns it into ``app.redis_conn``. That client
connects lazily, on the dashboard's first request.

Hardened around rq-dashboard (0.9), without changing it:

- its pages run one inline script of its own: each page gets a fresh nonce
  for its own ``<script>`` tags and a Content-Security-Policy that runs
  nothing else, so markup that reaches a job's text (it renders exception
  text unescaped) cannot run a script or a handler. Its templates are
  underscore's, compiled with ``new Function``: hence ``'unsafe-eval'``.
- a route that takes POST changes state (requeue, delete, empty, compact):
  it takes nothing but POST (``/rq/requeue/<queue>`` also answers GET in
  rq-dashboard), and ``web.security`` refuses a POST from another site.
"""

from __future__ import annotations

import re
import secrets

from flask import Flask, Response, request
from werkzeug.exceptions import MethodNotAllowed

from .auth import dashboard_guard

URL_PREFIX = "/rq"
SCRIPT_TAG = re.compile(r"<script\b", re.IGNORECASE)


def dashboard_csp(nonce: str) -> str:
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' 'nonce-{nonce}' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def only_post_writes() -> None:
    """``before_request``: a GET on a route that also takes POST (it changes state) is a 405."""
    rule = request.url_rule
    if request.method == "GET" and rule is not None and "POST" in (rule.methods or ()):
        raise MethodNotAllowed(valid_methods=["POST"])


def with_csp(response: Response) -> Response:
    """``after_request``: the page's own scripts get a nonce, and the policy runs only those."""
    if response.mimetype != "text/html" or response.direct_passthrough or response.is_streamed:
        return response
    nonce = secrets.token_urlsafe(16)
    # rq-dashboard's server-rendered HTML holds no job text (it comes as JSON, later),
    # and Jinja escapes what it inserts: every <script here is rq-dashboard's own.
    response.set_data(SCRIPT_TAG.sub(f'<script nonce="{nonce}"', response.get_data(as_text=True)))
    response.headers["Content-Security-Policy"] = dashboard_csp(nonce)
    return response


def init_app(app: Flask, redis_url: str) -> None:
    import rq_dashboard
    from rq_dashboard.web import setup_rq_connection

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    # Runs for the dashboard's requests only, on this app only (the blueprint object is
    # rq-dashboard's module-level one, shared by every app a process builds).
    name = rq_dashboard.blueprint.name
    app.before_request_funcs.setdefault(name, []).insert(0, dashboard_guard)
    app.before_request_funcs[name].append(only_post_writes)
    app.after_request_funcs.setdefault(name, []).append(with_csp)
    setup_rq_connection(app)
