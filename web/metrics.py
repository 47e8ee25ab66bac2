"""Operations: ``/healthz`` and ``/metrics`` (Prometheus text).

Each app has its own ``CollectorRegistry`` (nothing global, so tests can build
many apps). What it exports:

- ``progress_updates_accepted_total{reason}`` / ``progress_updates_rejected_total{reason}``:
  the store's update counts by reason, read from Redis at scrape time
  (``ProgressStore.read_stats``: a hash summed over every process);
- ``progress_redis_up``: whether that read worked;
- ``progress_job_duration_seconds{pipeline,outcome}`` and
  ``progress_step_duration_seconds{pipeline,step}`` (histograms) and
  ``progress_jobs_finished_total{pipeline,outcome}``: every finished job, counted once
  when the mirror lands it in PostgreSQL (``progress_service.duration_histograms``:
  a Redis hash, so global too);
- ``progress_queue_depth{queue}``: the jobs waiting in the RQ queue;
- ``progress_sse_clients``: event streams open in *this* process;
- ``progress_http_request_duration_seconds{method,endpoint,status}``: request
  latency in this process (for an event stream, the time to open it).

With several gunicorn workers the per-process values come from whichever
worker answered the scrape; the update counts are global.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from progress_service import queue
from progress_service.duration_histograms import read_histograms
from progress_service.errors import BackendUnavailable
from progress_service.store import ProgressStore

from .auth import OPEN, read_access

logger = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

ACCEPTED_REASONS = frozenset({"ok", "unchanged"})
REJECTED_REASONS = frozenset({"regression", "terminal", "not_found"})  # each exported, 0 until one happens
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POSTGRES_CONNECT_TIMEOUT = 2
STARTED = "progress.started"  # the WSGI environ key of a request's start time


class StoreCollector:
    """Reads the store's shared counters and the process's open streams at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        store = self.app.extensions["progress"]
        hub = self.app.extensions["progress_events"]
        accepted = CounterMetricFamily(
            "progress_updates_accepted", "Progress updates the store accepted, by reason (every process).",
            labels=["reason"])
        rejected = CounterMetricFamily(
            "progress_updates_rejected", "Progress updates the store rejected, by reason (every process).",
            labels=["reason"])
        up = GaugeMetricFamily("progress_redis_up", "1 if the update counts could be read from Redis.")
        try:
            stats = store.read_stats()
        except Exception as exc:  # a scrape must answer even with Redis down
            logger.warning("metrics: cannot read the update counts: %s", exc)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for reason in ACCEPTED_REASONS | REJECTED_REASONS:
                stats.setdefault(reason, 0)
            for reason, count in sorted(stats.items()):
                family = accepted if reason in ACCEPTED_REASONS else rejected
                family.add_metric([reason], count)
        yield accepted
        yield rejected
        yield up
        yield from self.durations(store)
        yield from self.queue_depth(store)
        yield GaugeMetricFamily("progress_sse_clients", "Server-Sent Events streams open in this process.",
                                value=hub.client_count)

    def durations(self, store: ProgressStore):
        """The shared duration histograms and the finished jobs' count, from Redis."""
        jobs = HistogramMetricFamily(
            "progress_job_duration_seconds", "Finished jobs' durations, started to finished, by pipeline "
            "and outcome (every process).", labels=["pipeline", "outcome"])
        steps = HistogramMetricFamily(
            "progress_step_duration_seconds", "Finished jobs' step durations, read off their histories, by "
            "pipeline and step (every process).", labels=["pipeline", "step"])
        finished = CounterMetricFamily(
            "progress_jobs_finished", "Finished jobs, by pipeline and outcome, counted as the mirror lands "
            "them in PostgreSQL (every process).", labels=["pipeline", "outcome"])
        try:
            found = read_histograms(store)
        except Exception as exc:  # as above: a scrape answers without them
            logger.warning("metrics: cannot read the duration histograms: %s", exc)
            found = []
        for h in found:
            if h.kind == "finished":
                finished.add_metric(list(h.labels), h.count)
            else:
                family = jobs if h.kind == "job" else steps
                family.add_metric(list(h.labels), buckets=h.buckets, sum_value=h.sum)
        yield jobs
        yield steps
        yield finished

    def queue_depth(self, store: ProgressStore):
        """How many jobs wait in the RQ queue (RQ's connection, ``web.api.rq_connection``)."""
        depth = GaugeMetricFamily("progress_queue_depth", "Jobs waiting in the RQ queue for a worker.",
                                  labels=["queue"])
        try:
            from .api import rq_connection

            with self.app.app_context():
                depth.add_metric([store.settings.queue_name], queue.queue_depth(store.settings, rq_connection()))
        except Exception as exc:  # as above
            logger.warning("metrics: cannot read the queue's length: %s", exc)
        yield depth


class Metrics:
    def __init__(self, app: Flask) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "progress_http_request_duration_seconds", "Time to answer a request (to open it, for a stream).",
            ["method", "endpoint", "status"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(StoreCollector(app))
        self._children: dict[tuple[str, str, int], Any] = {}

    def start(self) -> None:
        request.environ[STARTED] = time.perf_counter()

    def observe(self, response: Response) -> Response:
        started = request.environ.get(STARTED)
        if started is not None:
            key = (request.method, request.endpoint or "unmatched", response.status_code)
            child = self._children.get(key)
            if child is None:  # labels() validates and locks: once per combination, not per request
                child = self._children[key] = self.latency.labels(key[0], key[1], str(key[2]))
            child.observe(time.perf_counter() - started)
        return response


def init_app(app: Flask) -> None:
    metrics = Metrics(app)
    app.extensions["progress_metrics"] = metrics
    app.before_request(metrics.start)
    app.after_request(metrics.observe)
    app.register_blueprint(bp)


@bp.get("/metrics")
@read_access(OPEN)
def metrics_text():
    registry = current_app.extensions["progress_metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
@read_access(OPEN)
def healthz() -> Response | tuple[Response, int]:
    store: ProgressStore = current_app.extensions["progress"]
    answer: dict[str, str] = {}
    down: list[str] = []
    try:
        store.ping()
        answer["redis"] = "ok"
    except BackendUnavailable as exc:  # its text names Redis
        answer["redis"] = "down"
        down.append(str(exc))
    except Exception as exc:  # any other failure reads "down" too: a health check reports, it does not fail
        answer["redis"] = "down"
        down.append(f"redis: {exc}")
    try:
        import psycopg

        psycopg.connect(store.settings.database_url, connect_timeout=POSTGRES_CONNECT_TIMEOUT).close()
        answer["postgres"] = "ok"
    except Exception as exc:  # as above: whatever psycopg raises, PostgreSQL is down for us
        answer["postgres"] = "down"
        down.append(f"postgres: {str(exc).strip()}")
    if down:
        answer.update(error="backend_unavailable", detail="; ".join(down))
        return jsonify(answer), 503
    return jsonify(answer)
