"""Metrics for operators: the job and step duration histograms every process shares (through
Redis, filled by the mirror), the jobs finished, the update outcomes, the queue depth, and the
Grafana dashboard (deploy/grafana/progress-service.json) built on them.

The end-to-end tests run one real job: queued in RQ, run by a ProgressSimpleWorker (its
pipeline a subprocess), landed in PostgreSQL by the mirror; then ``/metrics`` of a real app.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sys
import textwrap
import time

import pytest
from helpers import CLOSED_DATABASE_URL, REPO
from prometheus_client.parser import text_string_to_metric_families
from test_api import build

from progress_service import duration_histograms as dh
from progress_service.mirror import Mirror
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import submit_job
from worker.jobs import ProgressSimpleWorker

DASHBOARD = REPO / "deploy" / "grafana" / "progress-service.json"
PIPELINE = "t-metrics"
# Two steps that take a little time each, as a worker's pipeline would report them.
SOURCE = """
    import time
    print("STEP a", flush=True)
    time.sleep(0.15)
    print("PROGRESS 40", flush=True)
    print("STEP b", flush=True)
    time.sleep(0.15)
    print("PROGRESS 90", flush=True)
"""


@pytest.fixture
def store(connected_store):
    return connected_store


@pytest.fixture
def env(monkeypatch, settings, tmp_path):
    """The worker's environment, which the job function reads: this test's prefix and queue."""
    for name, value in {"REDIS_URL": settings.redis_url, "PROGRESS_KEY_PREFIX": settings.key_prefix,
                        "PROGRESS_QUEUE": settings.queue_name, "PROGRESS_MIN_INTERVAL": "0.05",
                        "PROGRESS_OUTPUT_DIR": str(tmp_path / "out"),
                        "DATABASE_URL": CLOSED_DATABASE_URL}.items():
        monkeypatch.setenv(name, value)
    for name in ("PROGRESS_REDIS_URL", "PROGRESS_REDIS_CLUSTER", "PROGRESS_JOB_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    source = textwrap.dedent(SOURCE)
    monkeypatch.setitem(PIPELINES, PIPELINE, Pipeline(
        name=PIPELINE, steps=("a", "b"), command=lambda paper_id, out_dir, job_id: [sys.executable, "-c", source]))


@pytest.fixture
def app(settings, real_redis, db_url):
    app = build(dataclasses.replace(settings, database_url=db_url))
    yield app
    app.extensions["progress_events"].close()


def work(settings, conn, store) -> None:
    """A burst of ProgressSimpleWorker in this thread; the signal handlers RQ sets are undone."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    try:
        ProgressSimpleWorker([settings.queue_name], connection=conn, store=store,
                             name=f"{settings.key_prefix}-{time.monotonic_ns()}").work(burst=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def families(app) -> dict:
    """``/metrics`` parsed by prometheus_client's own text parser: family name -> family."""
    r = app.test_client().get("/metrics")
    assert r.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def samples(found: dict, family: str, name: str | None = None, **labels: str) -> list:
    return [s for s in found[family].samples if (name is None or s.name == name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def value(found: dict, family: str, name: str, **labels: str) -> float:
    (sample,) = [s for s in samples(found, family, name, **labels) if set(s.labels) == set(labels)]
    return sample.value


def submit_one(settings, store, rq_conn) -> str:
    return submit_job(settings, "31452104", PIPELINE, store=store, redis_conn=rq_conn,
                      job_id=f"{settings.key_prefix}-metrics")


def run_and_mirror(settings, store, rq_conn, db_url, job_id: str) -> None:
    """The queued job run by the worker, then landed in PostgreSQL by the mirror."""
    work(settings, rq_conn, store)
    assert store.get(job_id)["status"] == "completed"
    store.flush_stats()
    with Mirror(store, db_url) as mirror:
        assert mirror.sweep() == 1


def test_after_one_job_metrics_holds_its_histograms_by_pipeline_and_step(env, settings, store, rq_conn,
                                                                          db_url, app):
    job_id = submit_one(settings, store, rq_conn)
    before = families(app)
    assert value(before, "progress_queue_depth", "progress_queue_depth", queue=settings.queue_name) == 1
    assert not samples(before, "progress_job_duration_seconds")  # nothing has finished yet

    run_and_mirror(settings, store, rq_conn, db_url, job_id)
    found = families(app)
    assert found["progress_job_duration_seconds"].type == "histogram"
    assert found["progress_step_duration_seconds"].type == "histogram"
    job = {"pipeline": PIPELINE, "outcome": "completed"}
    assert value(found, "progress_job_duration_seconds", "progress_job_duration_seconds_count", **job) == 1
    assert value(found, "progress_job_duration_seconds", "progress_job_duration_seconds_bucket",
                 **job, le="+Inf") == 1
    assert value(found, "progress_job_duration_seconds", "progress_job_duration_seconds_sum", **job) > 0.3
    for step in ("a", "b"):
        labels = {"pipeline": PIPELINE, "step": step}
        assert value(found, "progress_step_duration_seconds", "progress_step_duration_seconds_count", **labels) == 1
        # each step slept 0.15 s: past the 0.1 s bucket, within the 5 s one
        assert value(found, "progress_step_duration_seconds", "progress_step_duration_seconds_bucket",
                     **labels, le="0.1") == 0
        assert value(found, "progress_step_duration_seconds", "progress_step_duration_seconds_bucket",
                     **labels, le="5.0") == 1
    assert value(found, "progress_jobs_finished", "progress_jobs_finished_total", **job) == 1
    assert value(found, "progress_updates_accepted", "progress_updates_accepted_total", reason="ok") > 0
    assert value(found, "progress_queue_depth", "progress_queue_depth", queue=settings.queue_name) == 0
    # another web process (its own registry and clients, as each gunicorn worker has) sees the same
    other = build(dataclasses.replace(settings, database_url=db_url))
    try:
        assert value(families(other), "progress_step_duration_seconds", "progress_step_duration_seconds_count",
                     pipeline=PIPELINE, step="b") == 1
    finally:
        other.extensions["progress_events"].close()

    # written again (a forced change after it landed, and the mirror copies it anew): counted once
    assert store.update(job_id, message="note added later", force=True).accepted
    with Mirror(store, db_url) as mirror:
        assert mirror.sweep() == 1
    again = families(app)
    assert value(again, "progress_job_duration_seconds", "progress_job_duration_seconds_count", **job) == 1


def exported_names(found: dict) -> dict[str, str]:
    """Every metric name a PromQL expression may use -> the family's type (a histogram's
    _bucket, _sum and _count; a counter's _total)."""
    names = {}
    for family in found.values():
        for sample in family.samples:
            names[sample.name] = family.type
        names[family.name] = family.type
    return names


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: what is left once strings, label matchers,
    ranges, groupings, function calls, keywords, numbers and Grafana's variables are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # $__rate_interval, ${pipeline}
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        after = expr[match.end():].lstrip()
        if after.startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function, or a keyword
        names.add(match.group())
    return names


def dashboard_metric_names(dashboard: dict) -> set[str]:
    """Every metric name the dashboard's panels and variables read."""
    names: set[str] = set()

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            names |= promql_metric_names(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        found = re.match(r"label_values\(\s*([^,()]+?)\s*,", query or "")
        if found:
            names |= promql_metric_names(found.group(1))
    return names


def unknown_names(names: set[str], exported: dict[str, str]) -> set[str]:
    """The names /metrics does not export: a histogram's series are its name with _bucket, _sum
    or _count, a counter's with _total, and no other family's."""
    unknown = set()
    for name in names:
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        suffix = name[len(base):]
        kind = exported.get(base)
        if name in exported and (not suffix or kind in ("histogram", "counter")):
            if (suffix in ("_bucket", "_sum", "_count") and kind != "histogram") or \
                    (suffix == "_total" and kind != "counter"):
                unknown.add(name)
            continue
        unknown.add(name)
    return unknown


def test_the_grafana_dashboard_reads_only_metrics_the_app_exports(env, settings, store, rq_conn, db_url, app):
    submitted = app.test_client().post("/api/v1/jobs", json={"paper_id": "31452104", "pipeline": PIPELINE})
    assert submitted.status_code == 202
    run_and_mirror(settings, store, rq_conn, db_url, submitted.get_json()["job_id"])
    exported = exported_names(families(app))
    dashboard = json.loads(DASHBOARD.read_text())
    names = dashboard_metric_names(dashboard)
    assert not unknown_names(names, exported), f"the dashboard reads what /metrics lacks: {unknown_names(names, exported)}"
    # and it shows what operators came for
    assert {"progress_job_duration_seconds_bucket", "progress_step_duration_seconds_bucket",
            "progress_jobs_finished_total", "progress_updates_accepted_total",
            "progress_updates_rejected_total", "progress_queue_depth", "progress_sse_clients"} <= names
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any(e.startswith("histogram_quantile(0.9, sum by (le, pipeline) (rate(progress_job_duration")
               for e in exprs)
    # the check itself catches a name /metrics lacks, and a histogram suffix on a gauge
    assert unknown_names(promql_metric_names('sum(rate(progress_jobs_done_total{x="y"}[5m]))'), exported) == {
        "progress_jobs_done_total"}
    assert unknown_names({"progress_queue_depth_count"}, exported) == {"progress_queue_depth_count"}


# -- the shared histograms, on both backends ------------------------------------------------------


def finished_job(store, job_id: str, steps=("a", "b")) -> tuple[dict, list]:
    store.create_job(job_id, "31452104", steps=list(steps))
    for step in steps:
        store.update(job_id, status="running", current_step=step)
    store.update(job_id, progress_percent=100)
    return store.get(job_id), store.history(job_id)


def test_the_histograms_add_up_cumulative_buckets_over_every_process(store):
    snap, history = finished_job(store, "job-1")
    observations = dh.observations(snap, history)
    assert {json.loads(series)[0] for series, _, _ in observations} == {"finished", "job", "step"}
    assert dh.record_landed(store, [(snap, history)]) == len(observations)
    # a second process adding a job of its own: the same hash
    assert dh.record_landed(store, [({**snap, "status": "failed"}, history)]) == len(observations)
    found = {(h.kind, h.labels): h for h in dh.read_histograms(store)}
    job = found[("job", ("video", "completed"))]
    assert job.count == 1 and job.buckets[-1] == ("+Inf", 1)
    assert [count for _, count in job.buckets] == sorted(count for _, count in job.buckets)  # cumulative
    assert job.buckets[0] == ("1.0", 1)  # it took milliseconds
    assert found[("finished", ("video", "failed"))].count == 1
    assert found[("step", ("video", "a"))].count == 2  # both jobs ran step a to its end


def test_past_the_cap_new_series_are_dropped_and_known_ones_still_count(store, monkeypatch, caplog):
    monkeypatch.setattr(dh, "MAX_SERIES", 3)
    snap, history = finished_job(store, "job-1", steps=("a",))  # finished, job, step a: three series
    assert dh.record_landed(store, [(snap, history)]) == 3
    other = {**snap, "pipeline": "other"}
    assert dh.record_landed(store, [(other, history), (snap, history)]) == 3  # only video's kept
    assert "the observations of 3 new ones dropped" in caplog.text
    found = {(h.kind, h.labels): h.count for h in dh.read_histograms(store)}
    assert found == {("finished", ("video", "completed")): 2, ("job", ("video", "completed")): 2,
                     ("step", ("video", "a")): 2}


def test_redis_down_costs_the_histograms_not_the_mirror(settings, caplog):
    import redis

    from progress_service.store import ProgressStore

    down = ProgressStore(redis.Redis.from_url("redis://127.0.0.1:1/0"), settings)
    snap = {"pipeline": "video", "status": "completed", "started_at": None, "finished_at": None, "steps": []}
    assert dh.record_landed(down, [(snap, [])]) == 0
    assert "left out of the duration histograms" in caplog.text
