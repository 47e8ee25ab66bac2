"""The web app: the JSON API, live events, the status pages, health, metrics and the RQ dashboard.

``create_app()`` builds everything (Flask's tutorial style); nothing is
created at import time. ``app.extensions["progress"]`` holds the
``ProgressStore``; ``app.extensions["progress_events"]`` the process's one
pub/sub listener (``web.fanout.EventHub``).

Run it under gunicorn with the gevent worker (``progress-service web``): every
open event stream is a waiting greenlet, so one process holds thousands.
"""

from __future__ import annotations

import logging
import os

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider

from progress_service.config import ConfigError, Settings
from progress_service.pipelines import load_pipelines
from progress_service.queue import queue_probe
from progress_service.store import ProgressStore

from . import (
    api,
    auth,
    batches,
    dashboard,
    errors,
    events,
    insights,
    live,
    metrics,
    openapi,
    pages,
    security,
)
from .fanout import EventHub

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024  # bytes of a JSON request body; more is a 413
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
NO_CACHE_ITEMS = tuple(NO_CACHE.items())
# Files that never change keep their validators: our static files, rq-dashboard's, a job's video.
FILE_ENDPOINTS = frozenset({"static", "rq_dashboard.static", "api.job_video"})


def redis_client(settings: Settings, *, pool_size: int, role: str):
    """A client of the progress store for this process, named ``<prefix>.web.<pid>.<role>``.

    A blocking pool of ``pool_size`` connections: a thousand streams opening
    at once wait their turn for a connection instead of opening a thousand.
    The name lets an operator (and the tests) find a web process's
    connections in ``CLIENT LIST``.
    """
    import redis

    name = f"{settings.key_prefix}.web.{os.getpid()}.{role}"
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.progress_redis_url, decode_responses=True,
                                           client_name=name)
    pool = redis.BlockingConnectionPool.from_url(
        settings.progress_redis_url, max_connections=pool_size, timeout=10,
        decode_responses=True, client_name=name, health_check_interval=30,
        socket_connect_timeout=5, socket_keepalive=True,
    )
    return redis.Redis(connection_pool=pool)


def create_app(settings: Settings | None = None, *, redis_pool: int | None = None) -> Flask:
    """Build the app from ``settings`` (``Settings.from_env()`` when None).

    ``redis_pool`` is the number of Redis connections a web process holds for reads,
    besides its one pub/sub connection (default ``settings.web_redis_pool``:
    ``PROGRESS_WEB_REDIS_POOL``).
    """
    settings = settings or Settings.from_env()
    if settings.reads_need_token and not settings.secret_key:
        raise ConfigError("PROGRESS_READ_AUTH=token needs PROGRESS_SECRET_KEY (it signs the read tokens)")
    if settings.reads_need_token and not settings.api_token:
        logger.warning("PROGRESS_READ_AUTH=token without PROGRESS_API_TOKEN: nobody can list jobs or mint "
                       "read tokens; only a submit's answer gives one (for its own job)")
    load_pipelines(settings)  # a broken PROGRESS_PIPELINES or entry point stops the app here
    if redis_pool is None:
        redis_pool = settings.web_redis_pool
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        PROGRESS_SSE_KEEPALIVE=settings.sse_keepalive,
    )
    json_provider = DefaultJSONProvider(app)  # what Flask builds itself; app.json is typed as its base
    json_provider.sort_keys = False
    json_provider.compact = True
    app.json = json_provider

    store = ProgressStore(redis_client(settings, pool_size=redis_pool, role="store"), settings)
    app.extensions["progress"] = store
    store.queue_probe = queue_probe(settings)  # a pending job's ETA counts its wait in RQ's queue
    app.extensions["progress_events"] = EventHub(
        lambda: redis_client(settings, pool_size=1, role="events"), store.keys.all_events,
        step_stats=store.step_stats)

    errors.register(app)
    metrics.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(insights.bp)
    live.init_app(app)  # the dashboard's stream of every job, fed from the hub above
    dashboard.init_app(app, settings.redis_url)
    app.before_request(security.guard_writes)
    app.before_request(auth.guard_reads)
    app.after_request(security.add_headers)

    @app.after_request
    def no_cache(response):
        """Every answer that can change (JSON, event streams, pages) is never cached.

        Static files and a job's video (which never changes) keep their validators.
        """
        endpoint = request.endpoint or ""
        if endpoint in FILE_ENDPOINTS and response.status_code in (200, 206, 304):
            return response
        headers = response.headers
        for name, value in NO_CACHE_ITEMS:
            headers[name] = value
        return response

    return app
