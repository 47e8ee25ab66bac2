"""The RQ dashboard (rq-dashboard's blueprint) at ``/rq/``, behind the API token when one is set.

rq-dashboard reads its Redis from ``RQ_DASHBOARD_REDIS_URL`` in the app's
config; ``setup_rq_connection`` turns it into ``app.redis_conn``. That client
connects lazily, on the dashboard's first request.
"""

from __future__ import annotations

import logging

from flask import Flask

from .auth import dashboard_guard

logger = logging.getLogger(__name__)

URL_PREFIX = "/rq"


def init_app(app: Flask, redis_url: str) -> None:
    try:
        import rq_dashboard
        from rq_dashboard.web import setup_rq_connection
    except ImportError as exc:  # the rest of the app works without it
        logger.warning("rq-dashboard is not installed; /rq/ is off (%s)", exc)
        return
    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    # Runs for the dashboard's requests only, on this app only (the blueprint object is
    # rq-dashboard's module-level one, shared by every app a process builds).
    app.before_request_funcs.setdefault(rq_dashboard.blueprint.name, []).insert(0, dashboard_guard)
    setup_rq_connection(app)
