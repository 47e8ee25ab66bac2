"""The JSON API, the status JSON, health, metrics and the RQ dashboard, through Flask's test client.

On the real Redis (each test under a key prefix of its own) and, where a test
needs it, the real PostgreSQL (in a schema of the test's own).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from html.parser import HTMLParser

import pytest
import redis
from helpers import CLOSED_REDIS_URL, wait_until
from openapi_check import OpenApiClient

from progress_service.models import DEFAULT_STEPS
from progress_service.store import ProgressStore
from web import create_app

STEPS = list(DEFAULT_STEPS)
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
SNAPSHOT_KEYS = {
    "job_id", "paper_id", "pipeline", "status", "progress_percent", "current_step", "steps",
    "completed_steps", "total_steps", "message", "error", "result", "seq", "created_at", "started_at",
    "progress_updated_at", "finished_at", "heartbeat_at", "batch_id", "tags", "attempt", "retry_of",
    "is_stale", "eta_seconds", "eta_source",
}
STATUS_KEYS = {
    "paper_id", "pmid", "exists", "status", "current_step", "completed_steps", "progress_percent",
    "progress_updated_at", "is_stale", "final_video", "final_video_url", "job_id",
    "queue",  # beyond the core snapshot: a pending job's RQ queue and how many workers listen there
    "typical_seconds",  # beyond the core snapshot: how long a job of its pipeline typically takes
}
TOKEN = "s3cret-token"
BAD_IDS = ["bad%20id", "-leading-dash", "x" * 65, "semi%3Bcolon", "%C3%A9t%C3%A9"]


def build(settings):
    """The app, whose test clients check every answer against the OpenAPI document."""
    app = create_app(settings)
    app.config["TESTING"] = True
    app.test_client_class = OpenApiClient
    return app


@pytest.fixture
def app(settings, real_redis):
    app = build(settings)
    yield app
    app.extensions["progress_events"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def jobs(app) -> ProgressStore:
    """The app's own store, for making jobs and driving their updates."""
    return app.extensions["progress"]


@pytest.fixture
def pg_app(settings, real_redis, db_url):
    app = build(dataclasses.replace(settings, database_url=db_url))
    yield app
    mirror = app.extensions.get("progress_mirror")
    if mirror is not None:
        mirror.close()
    app.extensions["progress_events"].close()


def assert_no_cache(response):
    for name, value in NO_CACHE.items():
        assert response.headers.get(name) == value, (name, response.headers)


def assert_error(response, status, what=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) >= {"error", "detail"} and body["detail"], body
    if what is not None:
        assert body["error"] == what, body
    assert_no_cache(response)
    return body


def running_job(store, job_id="job-1", paper_id="31452104", progress=40, step="generate-audio"):
    store.create_job(job_id, paper_id, steps=STEPS)
    store.update(job_id, status="running", current_step="fetch-paper", progress_percent=5)
    store.update(job_id, current_step=step, progress_percent=progress, message="speaking slide 2/6")
    return job_id


def completed_job(store, job_id, paper_id, video_path=None):
    store.create_job(job_id, paper_id, steps=STEPS)
    store.update(job_id, status="running", current_step="fetch-paper", progress_percent=10)
    result = {"video_url": f"file://{video_path}", "video_path": str(video_path)} if video_path else {}
    store.update(job_id, progress_percent=100, result=result)
    return job_id


# -- reading ----------------------------------------------------------------


def test_job_snapshot_has_the_contract_shape_and_no_cache_headers(client, jobs):
    running_job(jobs)
    r = client.get("/api/v1/jobs/job-1")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert_no_cache(r)
    snap = r.get_json()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap["status"] == "running" and snap["progress_percent"] == 40
    assert snap["current_step"] == "generate-audio"
    assert snap["completed_steps"] == ["fetch-paper", "generate-script"]
    assert snap["total_steps"] == 5 and snap["seq"] == 3 and snap["is_stale"] is False
    assert snap["message"] == "speaking slide 2/6"


def test_history_lists_every_accepted_change(client, jobs):
    running_job(jobs)
    r = client.get("/api/v1/jobs/job-1/history")
    assert r.status_code == 200
    assert_no_cache(r)
    history = r.get_json()
    assert [e["seq"] for e in history] == [1, 2, 3]
    assert set(history[0]) == {"seq", "at", "progress_percent", "current_step", "status"}
    assert [e["status"] for e in history] == ["pending", "running", "running"]
    assert history[-1]["current_step"] == "generate-audio" and history[-1]["progress_percent"] == 40


def test_list_jobs_newest_first_filtered_and_limited(client, jobs):
    running_job(jobs, "job-a", "111")
    completed_job(jobs, "job-b", "222")
    running_job(jobs, "job-c", "111", progress=20)
    r = client.get("/api/v1/jobs")
    assert r.status_code == 200
    assert_no_cache(r)
    assert [j["job_id"] for j in r.get_json()["jobs"]] == ["job-c", "job-b", "job-a"]
    assert set(r.get_json()["jobs"][0]) == SNAPSHOT_KEYS
    assert "PostgreSQL is unavailable" in r.headers["Warning"]  # the list says what it could not check
    by_paper = client.get("/api/v1/jobs?paper_id=111").get_json()["jobs"]
    assert [j["job_id"] for j in by_paper] == ["job-c", "job-a"]
    done = client.get("/api/v1/jobs?status=completed").get_json()["jobs"]
    assert [j["job_id"] for j in done] == ["job-b"]
    assert [j["job_id"] for j in client.get("/api/v1/jobs?limit=1").get_json()["jobs"]] == ["job-c"]


@pytest.mark.parametrize("query, field", [
    ("status=finished", "status"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("paper_id=bad%20id", "paper_id"),
    ("paperid=111", "paperid"),
])
def test_list_jobs_rejects_bad_queries(client, query, field):
    body = assert_error(client.get(f"/api/v1/jobs?{query}"), 400, "invalid_input")
    assert field in body["detail"]


@pytest.mark.parametrize("job_id", BAD_IDS)
@pytest.mark.parametrize("tail", ["", "/history", "/events", "/video"])
def test_malformed_job_ids_are_400(client, job_id, tail):
    body = assert_error(client.get(f"/api/v1/jobs/{job_id}{tail}"), 400, "invalid_input")
    assert "job_id" in body["detail"]


@pytest.mark.parametrize("paper_id", BAD_IDS)
def test_malformed_paper_ids_are_400(client, paper_id):
    assert_error(client.get(f"/status/{paper_id}/?_json=1"), 400, "invalid_input")
    page = client.get(f"/status/{paper_id}/")
    assert page.status_code == 400 and page.mimetype == "text/html"


def test_unknown_job_is_404_after_checking_postgres(pg_app):
    client = pg_app.test_client()
    for tail in ("", "/history", "/events", "/video"):
        assert_error(client.get(f"/api/v1/jobs/no-such-job{tail}"), 404, "not_found")


def test_unknown_job_with_postgres_down_is_503_not_a_false_404(client):
    """Redis does not hold it, and PostgreSQL, which might, does not answer: nobody knows."""
    body = assert_error(client.get("/api/v1/jobs/no-such-job"), 503, "backend_unavailable")
    assert "postgres" in body["detail"]


def test_flask_errors_are_json_under_api(client, jobs):
    running_job(jobs)
    assert_error(client.get("/api/v1/no-such-endpoint"), 404, "not_found")
    r = client.delete("/api/v1/jobs/job-1")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]
    body = assert_error(client.post("/api/v1/jobs", data=b"x" * (32 * 1024),
                                    content_type="application/json"), 413)
    assert body["error"] == "request_entity_too_large"


# -- the status JSON of a paper --------------------------------------------------


def test_status_json_of_a_running_job(client, jobs):
    running_job(jobs, paper_id="31452104")
    r = client.get("/status/31452104/?_json=1")
    assert r.status_code == 200
    assert_no_cache(r)
    status = r.get_json()
    assert set(status) == STATUS_KEYS
    assert status == {
        "paper_id": "31452104", "pmid": "31452104", "exists": True, "status": "running",
        "current_step": "generate-audio", "completed_steps": ["fetch-paper", "generate-script"],
        "progress_percent": 40, "progress_updated_at": status["progress_updated_at"],
        "is_stale": False, "final_video": None, "final_video_url": None, "job_id": "job-1",
        "queue": None, "typical_seconds": None,
    }
    assert status["progress_updated_at"].endswith("Z")


def test_a_pending_jobs_eta_and_typical_duration_come_from_its_pipelines_past(client, jobs):
    from progress_service.step_stats import StepStats, StepTimes

    jobs.create_job("job-p", "31452104", steps=STEPS)
    assert client.get("/api/v1/jobs/job-p").get_json()["eta_source"] is None  # nothing learned yet
    jobs.save_step_stats(StepStats("video", tuple(STEPS), 20, 90.0, 120.0,
                                   {s: StepTimes(18.0, 24.0, 20, i * 20.0) for i, s in enumerate(STEPS)}))
    snap = client.get("/api/v1/jobs/job-p").get_json()
    assert (snap["eta_seconds"], snap["eta_source"]) == (90.0, "history")  # not in RQ's queue: no wait
    assert client.get("/status/31452104/?_json=1").get_json()["typical_seconds"] == 90.0
    jobs.update("job-p", status="running", current_step=STEPS[1], progress_percent=20)
    snap = client.get("/api/v1/jobs/job-p").get_json()
    # generate-script has just begun: about four typical steps of 18 s are left
    assert snap["eta_source"] in ("history", "blend") and 70 <= snap["eta_seconds"] <= 72, snap


def test_status_json_follows_the_papers_latest_job(client, jobs):
    completed_job(jobs, "old-job", "31452104")
    created = jobs.server_time_ms()
    # the index orders a paper's jobs by the ms they began
    wait_until(lambda: jobs.server_time_ms() > created, timeout=5, interval=0.001,
               what="the server's clock to pass the ms the job began")
    running_job(jobs, "new-job", "31452104", progress=20)
    assert client.get("/status/31452104/?_json=1").get_json()["job_id"] == "new-job"


def test_status_json_of_an_unknown_paper_is_200_exists_false(client):
    status = client.get("/status/PMC-abc.1/?_json=1").get_json()
    assert set(status) == STATUS_KEYS
    assert status["exists"] is False and status["pmid"] is None and status["job_id"] is None
    assert status["status"] is None and status["progress_percent"] is None
    assert status["completed_steps"] == [] and status["final_video_url"] is None


def test_completed_job_serves_its_video(client, jobs, tmp_path):
    video = tmp_path / "31452104.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    completed_job(jobs, "job-v", "31452104", video_path=video)
    status = client.get("/status/31452104/?_json=1").get_json()
    assert status["status"] == "completed" and status["progress_percent"] == 100
    assert status["final_video"] == "31452104.mp4"
    assert status["final_video_url"] == "/api/v1/jobs/job-v/video"
    r = client.get(status["final_video_url"])
    assert r.status_code == 200 and r.mimetype == "video/mp4"
    assert r.data == video.read_bytes()
    partial = client.get(status["final_video_url"], headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and len(partial.data) == 100  # a <video> seeks with ranges


def test_only_a_video_named_in_a_completed_result_is_served(client, jobs, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    jobs.create_job("job-x", "31452104", steps=STEPS)
    jobs.update("job-x", status="running", current_step="fetch-paper", progress_percent=10)
    jobs.update("job-x", progress_percent=100, result={"video_path": str(secret)})
    assert_error(client.get("/api/v1/jobs/job-x/video"), 404, "not_found")
    running = running_job(jobs, "job-r", "222")
    assert_error(client.get(f"/api/v1/jobs/{running}/video"), 404, "not_found")
    assert client.get("/api/v1/jobs/job-x/video/../../../etc/passwd").status_code == 404


# -- writing: tokens, bodies --------------------------------------------------------


@pytest.fixture
def token_app(settings, real_redis):
    app = build(dataclasses.replace(settings, api_token=TOKEN))
    yield app
    app.extensions["progress_events"].close()


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {base64.b64encode(f'x:{TOKEN}'.encode()).decode()}"},
    {"Authorization": TOKEN},
])
def test_writing_needs_the_bearer_token(token_app, headers):
    client = token_app.test_client()
    r = client.post("/api/v1/jobs", json={"paper_id": "31452104"}, headers=headers)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.post("/api/v1/jobs/job-1/cancel", headers=headers), 401, "unauthorized")


def test_reading_needs_no_token(token_app):
    client = token_app.test_client()
    token_app.extensions["progress"].create_job("job-1", "31452104", steps=STEPS)
    assert client.get("/api/v1/jobs/job-1").status_code == 200
    assert client.get("/status/31452104/?_json=1").status_code == 200


@pytest.mark.parametrize("body, field", [
    (b"[1, 2]", "JSON object"),
    (b"not json", "JSON object"),
    (b'"31452104"', "JSON object"),
    (json.dumps({"paper_id": "31452104", "priority": 1}).encode(), "'priority'"),
    (json.dumps({"pipeline": "video"}).encode(), "'paper_id'"),
    (json.dumps({"paper_id": "bad id"}).encode(), "paper_id"),
    (json.dumps({"paper_id": 31452104}).encode(), "paper_id"),
    (json.dumps({"paper_id": "31452104", "pipeline": "../x"}).encode(), "pipeline"),
])
def test_submit_rejects_bad_bodies_naming_the_field(token_app, body, field):
    client = token_app.test_client()
    r = client.post("/api/v1/jobs", data=body, content_type="application/json",
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert field in assert_error(r, 400, "invalid_input")["detail"]


def test_cancel_rejects_a_body_with_fields(token_app):
    r = token_app.test_client().post("/api/v1/jobs/job-1/cancel", json={"force": True},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert "'force'" in assert_error(r, 400, "invalid_input")["detail"]


# -- backends down ---------------------------------------------------------------------


def test_redis_down_is_503_everywhere(settings):
    down = dataclasses.replace(settings, redis_url=CLOSED_REDIS_URL, progress_redis_url=CLOSED_REDIS_URL)
    app = build(down)
    client = app.test_client()
    for url in ("/api/v1/jobs/job-1", "/api/v1/jobs/job-1/history", "/api/v1/jobs",
                "/status/31452104/?_json=1", "/api/v1/jobs/job-1/events"):
        body = assert_error(client.get(url), 503, "backend_unavailable")
        assert "redis" in body["detail"], (url, body)
    assert client.get("/status/31452104/").status_code == 503
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["redis"] == "down"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "progress_redis_up 0.0" in metrics.get_data(as_text=True)
    app.extensions["progress_events"].close()


def test_healthz_ok_with_both_backends(pg_app):
    r = pg_app.test_client().get("/healthz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"redis": "ok", "postgres": "ok"}
    assert_no_cache(r)


def test_healthz_names_postgres_when_it_is_down(client):
    r = client.get("/healthz")
    body = assert_error(r, 503, "backend_unavailable")
    assert body["redis"] == "ok" and body["postgres"] == "down" and "postgres" in body["detail"]


# -- metrics, dashboard, pages -------------------------------------------------------------


def test_metrics_count_updates_by_reason_streams_and_latency(client, jobs):
    running_job(jobs)
    jobs.update("job-1", progress_percent=10)  # a regression: rejected
    jobs.update("job-1", progress_percent=40)  # unchanged
    jobs.update("no-such-job", progress_percent=50)  # not_found
    jobs.flush_stats()
    client.get("/api/v1/jobs/job-1")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'progress_updates_accepted_total{reason="ok"} 2.0' in text
    assert 'progress_updates_accepted_total{reason="unchanged"} 1.0' in text
    assert 'progress_updates_rejected_total{reason="regression"} 1.0' in text
    assert 'progress_updates_rejected_total{reason="not_found"} 1.0' in text
    assert "progress_sse_clients 0.0" in text
    assert "progress_redis_up 1.0" in text
    assert ('progress_http_request_duration_seconds_count{endpoint="api.get_job",method="GET",status="200"} 1.0'
            in text)


def test_rq_dashboard_is_mounted_at_rq(client):
    r = client.get("/rq/")
    assert r.status_code == 200 and b"RQ" in r.data
    assert client.get("/rq/0/data/queues.json").status_code == 200


def test_rq_dashboard_is_behind_the_token(token_app):
    client = token_app.test_client()
    r = client.get("/rq/")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert client.get("/rq/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert client.get("/rq/", headers={"Authorization": f"Basic {right}"}).status_code == 200
    assert client.get("/rq/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_pages_render_the_job(client, jobs):
    running_job(jobs, paper_id="31452104")
    page = client.get("/status/31452104/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert_no_cache(page)
    html = page.get_data(as_text=True)
    assert 'role="progressbar"' in html and 'aria-valuenow="40"' in html
    assert "40% complete (2 of 5 steps)" in html
    assert '<script type="module" src="/static/status.js">' in html  # it imports progress-client.js
    assert "http://" not in html and "https://" not in html  # no external assets
    index = client.get("/").get_data(as_text=True)
    # the dashboard draws its jobs from its stream (index.js, GET /api/v1/events), not from the page
    assert '<script type="module" src="/static/index.js">' in index
    assert '"overview_url": "/api/v1/overview"' in index and '"status_base": "/status/"' in index
    assert client.get("/?status=lost").status_code == 400  # a filter the dashboard does not know
    assert "No job for this paper yet" in client.get("/status/777/").get_data(as_text=True)
    assert client.get("/status/31452104").status_code == 308  # to the page with the slash


# -- the events endpoint through the test client (the live ones run under gunicorn: test_sse) --


def read_events(response):
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def app_streams(client) -> int:
    return client.application.extensions["progress_events"].client_count


def test_events_of_a_finished_job_end_at_once(client, jobs):
    completed_job(jobs, "job-f", "31452104")
    r = client.get("/api/v1/jobs/job-f/events")
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert_no_cache(r)
    events = read_events(r)
    assert [(seq, kind, snap["status"]) for seq, kind, snap in events] == [(3, "progress", "completed")]
    replay = read_events(client.get("/api/v1/jobs/job-f/events", headers={"Last-Event-ID": "1"}))
    assert [seq for seq, _, _ in replay] == [2, 3]
    assert replay[0][2]["status"] == "running" and replay[-1][2] == events[0][2]
    streams = app_streams(client)
    up_to_date = client.get("/api/v1/jobs/job-f/events?last_event_id=3")
    assert up_to_date.status_code == 204 and up_to_date.get_data() == b""  # EventSource: stop reconnecting
    assert_no_cache(up_to_date)
    assert client.get("/api/v1/jobs/job-f/events", headers={"Last-Event-ID": "3"}).status_code == 204
    assert app_streams(client) == streams  # a 204 holds no subscription


def test_events_reject_a_bad_last_event_id(client, jobs):
    running_job(jobs)
    assert_error(client.get("/api/v1/jobs/job-1/events", headers={"Last-Event-ID": "abc"}), 400)
    assert_error(client.get("/api/v1/jobs/job-1/events", headers={"Last-Event-ID": "-1"}), 400)


@pytest.mark.parametrize("request_kwargs", [
    {"query_string": "last_event_id=%C2%B2"},  # "²": str.isdigit says yes, int says no
    {"headers": [("Last-Event-ID", "\xb2")]},  # a raw non-ASCII byte (WSGI: latin-1)
    {"headers": [("Last-Event-ID", "9" * 5000)]},  # past int()'s 4,300 digits
    {"headers": [("Last-Event-ID", "9" * 17)]},  # past 2**53
    {"query_string": "last_event_id=%EF%BC%91"},  # a full-width digit one
], ids=["superscript", "raw-byte", "5000-digits", "past-2-53", "full-width"])
def test_a_last_event_id_that_is_not_ascii_digits_is_400_not_500(client, jobs, request_kwargs):
    running_job(jobs)
    body = assert_error(client.get("/api/v1/jobs/job-1/events", **request_kwargs), 400, "invalid_input")
    assert "Last-Event-ID" in body["detail"] and len(body["detail"]) < 200


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/job-1/cancel"])
def test_a_body_nested_thousands_deep_is_400_not_500(client, jobs, path):
    running_job(jobs)
    for body in ("[" * 15000, '{"a":' * 3000):  # under the 16 kB limit (over it: 413)
        r = client.post(path, data=body, content_type="application/json")
        assert_error(r, 400, "invalid_input")


@pytest.mark.parametrize("tail", ["%0A", "%0D%0A", "%0A%0A"])
def test_an_id_with_a_trailing_newline_is_400(client, jobs, tail):
    running_job(jobs, "abc", "abc")
    body = assert_error(client.get(f"/status/abc{tail}/?_json=1"), 400, "invalid_input")
    assert "paper_id" in body["detail"]
    for suffix in ("", "/history", "/events"):
        assert_error(client.get(f"/api/v1/jobs/abc{tail}{suffix}"), 400, "invalid_input")
    assert_error(client.get(f"/api/v1/jobs?paper_id=abc{tail}"), 400, "invalid_input")


# -- submitting and canceling (queue.py) -------------------------------------------------------


@pytest.fixture
def rq_cleanup(real_redis_url, rq_conn):
    """RQ's own keys of the jobs a test queues (they are not under the test's key prefix),
    and its queue's entry in ``rq:queues`` (``rq_conn``)."""
    from rq.job import Job

    job_ids: list[str] = []
    yield job_ids
    conn = redis.Redis.from_url(real_redis_url)
    for job_id in job_ids:
        try:
            Job.fetch(job_id, connection=conn).delete()
        except Exception:  # noqa: BLE001 - gone already
            pass
    conn.close()


def test_submit_creates_a_pending_job_and_queues_it(client, jobs, settings, real_redis_url, rq_cleanup):
    from rq import Queue

    r = client.post("/api/v1/jobs", json={"paper_id": "31452104", "pipeline": "video"})
    assert r.status_code == 202, r.get_json()
    assert_no_cache(r)
    body = r.get_json()
    rq_cleanup.append(body["job_id"])
    assert set(body) == {"job_id", "status_url", "events_url", "page_url"}
    job_id = body["job_id"]
    assert body["status_url"] == f"/api/v1/jobs/{job_id}" == r.headers["Location"]
    assert body["events_url"] == f"/api/v1/jobs/{job_id}/events"
    assert body["page_url"] == "/status/31452104/"
    snap = client.get(body["status_url"]).get_json()
    assert snap["status"] == "pending" and snap["paper_id"] == "31452104" and snap["steps"] == STEPS
    queue = Queue(settings.queue_name, connection=redis.Redis.from_url(real_redis_url))
    assert job_id in queue.job_ids
    assert client.get("/status/31452104/?_json=1").get_json()["job_id"] == job_id


def test_submits_under_read_auth_answer_a_read_token_and_a_page_url_with_it(settings, real_redis, rq_conn,
                                                                             rq_cleanup):
    from web import read_tokens

    app = build(dataclasses.replace(settings, read_auth="token", secret_key="k", api_token=TOKEN))
    try:
        client = app.test_client()
        r = client.post("/api/v1/jobs", json={"paper_id": "31452104"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202, r.get_json()
        body = r.get_json()
        rq_cleanup.append(body["job_id"])
        assert read_tokens.verify("k", body["read_token"]).describe() == f"job {body['job_id']}"
        assert body["page_url"] == f"/status/31452104/?token={body['read_token']}"
        assert client.get(body["page_url"]).status_code == 200
        assert client.get(body["status_url"]).status_code == 401

        r = client.post("/api/v1/batches", json={"paper_ids": ["31452104", "34265844"]},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202, r.get_json()
        batch = r.get_json()
        rq_cleanup.extend(batch["job_ids"])
        assert read_tokens.verify("k", batch["read_token"]).describe() == f"batch {batch['batch_id']}"
        assert batch["page_url"] == f"/batches/{batch['batch_id']}/?token={batch['read_token']}"
        assert client.get(batch["page_url"]).status_code == 200
        member = f"/api/v1/jobs/{batch['job_ids'][1]}?token={batch['read_token']}"
        assert client.get(member).status_code == 200
    finally:
        app.extensions["progress_events"].close()


def test_status_json_of_a_queued_job_says_how_many_workers_listen(client, settings, real_redis_url,
                                                                   rq_cleanup):
    from rq import Worker

    job_id = client.post("/api/v1/jobs", json={"paper_id": "31452104"}).get_json()["job_id"]
    rq_cleanup.append(job_id)
    status = client.get("/status/31452104/?_json=1").get_json()
    assert status["status"] == "pending"
    assert status["queue"] == {"name": settings.queue_name, "workers": 0}
    page = client.get("/status/31452104/").get_data(as_text=True)
    assert re.search(r'<div class="alert alert-warn" id="no-worker" role="status" >', page)
    assert f'<code id="no-worker-queue">{settings.queue_name}</code>' in page

    conn = redis.Redis.from_url(real_redis_url)
    listening = Worker([settings.queue_name], connection=conn, name=f"{settings.key_prefix}-w")
    listening.register_birth()
    try:
        assert client.get("/status/31452104/?_json=1").get_json()["queue"]["workers"] == 1
        page = client.get("/status/31452104/").get_data(as_text=True)
        assert re.search(r'id="no-worker" role="status" hidden>', page)
    finally:
        listening.register_death()
        conn.srem("rq:queues", f"rq:queue:{settings.queue_name}")
        conn.close()


def test_submit_with_the_token_and_an_unknown_pipeline(token_app, rq_cleanup):
    client = token_app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/v1/jobs", json={"paper_id": "31452104"}, headers=auth)
    assert r.status_code == 202
    rq_cleanup.append(r.get_json()["job_id"])
    r = client.post("/api/v1/jobs", json={"paper_id": "31452104", "pipeline": "no-such-pipeline"}, headers=auth)
    assert "no-such-pipeline" in assert_error(r, 400, "invalid_input")["detail"]


def test_cancel_a_queued_job_then_a_finished_one_is_409(client, jobs, rq_cleanup):
    job_id = client.post("/api/v1/jobs", json={"paper_id": "31452104"}).get_json()["job_id"]
    rq_cleanup.append(job_id)
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202, r.get_json()
    assert_no_cache(r)
    assert r.get_json()["job_id"] == job_id
    assert jobs.get(job_id)["status"] == "canceled"
    again = assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel"), 409, "conflict")
    assert "canceled" in again["detail"]
    completed_job(jobs, "job-done", "31452104")
    assert_error(client.post("/api/v1/jobs/job-done/cancel"), 409, "conflict")
    assert_error(client.post("/api/v1/jobs/no-such-job/cancel"), 404, "not_found")
    assert_error(client.post("/api/v1/jobs/bad%20id/cancel"), 400, "invalid_input")


def test_a_finished_job_expired_from_redis_is_served_from_postgres(pg_app, real_redis):
    from progress_service.mirror import Mirror

    store = pg_app.extensions["progress"]
    completed_job(store, "job-old", "31452104")
    with Mirror(store, store.settings.database_url) as mirror:
        assert mirror.mirror_job("job-old")
    live = store.get("job-old")
    for key in (store.keys.job("job-old"), store.keys.history("job-old")):
        real_redis.delete(key)  # what PROGRESS_JOB_TTL does, a week later
    assert store.get("job-old") is None
    client = pg_app.test_client()
    snap = client.get("/api/v1/jobs/job-old").get_json()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap == live | {"is_stale": False, "eta_seconds": None}
    assert [e["seq"] for e in client.get("/api/v1/jobs/job-old/history").get_json()] == [1, 2, 3]
    status = client.get("/status/31452104/?_json=1").get_json()
    assert status["exists"] is True and status["job_id"] == "job-old" and status["status"] == "completed"
    assert [j["job_id"] for j in client.get("/api/v1/jobs?paper_id=31452104").get_json()["jobs"]] == ["job-old"]
    events = read_events(client.get("/api/v1/jobs/job-old/events"))
    assert [(seq, snap["status"]) for seq, _, snap in events] == [(3, "completed")]
    assert events[0][2] == snap
    # a reconnect: with the last event, 204 (EventSource stops); with an older one, the rest from
    # PostgreSQL's copy of the history
    assert client.get("/api/v1/jobs/job-old/events", headers={"Last-Event-ID": "3"}).status_code == 204
    replay = read_events(client.get("/api/v1/jobs/job-old/events", headers={"Last-Event-ID": "1"}))
    assert [(seq, snap["status"]) for seq, _, snap in replay] == [(2, "running"), (3, "completed")]
    assert replay[-1][2] == snap


# -- the hardened edge (web.security, web.dashboard) -------------------------------------------


class Tags(HTMLParser):
    """Every start tag of a page, as (name, {attribute: value})."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def csp_of(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in policy.split(";")) if d}


def test_every_answer_carries_the_security_headers(client, jobs):
    running_job(jobs, paper_id="31452104")
    pages = ["/", "/status/31452104/", "/status/777/", "/status/bad%20id/"]
    others = ["/api/v1/jobs", "/api/v1/jobs/job-1", "/api/v1/jobs/job-1/history", "/api/v1/no-such",
              "/status/31452104/?_json=1", "/healthz", "/metrics", "/static/status.js", "/static/style.css"]
    for path in pages + others:
        r = client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["Referrer-Policy"] == "same-origin", path
        assert r.headers["X-Frame-Options"] == "DENY", path
        csp = csp_of(r)
        assert csp["frame-ancestors"] == ["'none'"], path
        if path in pages:
            assert r.mimetype == "text/html"
            assert csp["script-src"] == ["'self'"] and csp["object-src"] == ["'none'"], path
            assert csp["style-src"] == ["'self'"], path
        else:
            assert set(csp) == {"frame-ancestors"}, path


def test_the_pages_carry_no_inline_script_or_style(client, jobs):
    """Their CSP runs no inline script (nor style attributes): the pages need none."""
    running_job(jobs, paper_id="31452104")
    for path in ["/", "/status/31452104/", "/status/777/", "/status/bad%20id/"]:
        html = client.get(path).get_data(as_text=True)
        tags = Tags(html).tags
        scripts = [attrs for name, attrs in tags if name == "script"]
        assert scripts or path.endswith("%20id/"), path  # the error page has none
        for attrs in scripts:
            assert attrs.get("src") or attrs.get("type") == "application/json", (path, attrs)
        for name, attrs in tags:
            assert not [a for a in attrs if a.startswith("on")], (path, name, attrs)
            assert "style" not in attrs, (path, name, attrs)
            assert not any((v or "").strip().lower().startswith("javascript:") for v in attrs.values())


FORM_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]


@pytest.mark.parametrize("content_type", FORM_TYPES)
def test_a_write_takes_a_json_body_or_none(client, jobs, rq_cleanup, content_type):
    """What a form on another site can send without CORS (text/plain, form types) writes nothing."""
    body = json.dumps({"paper_id": "31452104"})
    r = client.post("/api/v1/jobs", data=body, content_type=content_type)
    assert "application/json" in assert_error(r, 415, "unsupported_media_type")["detail"]
    assert_error(client.post("/api/v1/jobs", data=body), 415, "unsupported_media_type")  # no type at all
    assert_error(client.post("/api/v1/any/write", data=body, content_type=content_type), 415)  # all of /api/
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []

    job_id = client.post("/api/v1/jobs", json={"paper_id": "31452104"}).get_json()["job_id"]
    rq_cleanup.append(job_id)
    for data in ("", "{}"):  # a form sends its type with an empty body too
        r = client.post(f"/api/v1/jobs/{job_id}/cancel", data=data, content_type=content_type)
        assert_error(r, 415, "unsupported_media_type")
    assert jobs.get(job_id)["status"] == "pending"
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", data="{}", content_type="application/json; charset=utf-8")
    assert r.status_code == 202, r.get_json()
    assert jobs.get(job_id)["status"] == "canceled"


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
])
def test_a_write_from_another_site_is_refused(client, jobs, rq_cleanup, headers):
    """A bodyless cancel needs no CORS preflight (fetch with mode no-cors): the browser's
    Sec-Fetch-Site / Origin say where it comes from."""
    r = client.post("/api/v1/jobs", json={"paper_id": "31452104"}, headers=headers)
    assert "another site" in assert_error(r, 403, "forbidden")["detail"]
    job_id = client.post("/api/v1/jobs", json={"paper_id": "31452104"}).get_json()["job_id"]
    rq_cleanup.append(job_id)
    assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers), 403, "forbidden")
    assert jobs.get(job_id)["status"] == "pending"
    assert client.get(f"/api/v1/jobs/{job_id}", headers=headers).status_code == 200  # reads stay open
    # this site's own pages (and clients that are not browsers, which send neither header) write
    for own in ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, {"Origin": "http://localhost"}):
        r = client.post("/api/v1/jobs", json={"paper_id": "31452104"}, headers=own)
        assert r.status_code == 202, r.get_json()
        rq_cleanup.append(r.get_json()["job_id"])
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 202


def test_the_rq_dashboard_runs_only_its_own_scripts(client):
    r = client.get("/rq/")
    csp = csp_of(r)
    nonces = [s for s in csp["script-src"] if s.startswith("'nonce-")]
    assert len(nonces) == 1 and "'unsafe-inline'" not in csp["script-src"]
    nonce = nonces[0][len("'nonce-"):-1]
    scripts = [attrs for name, attrs in Tags(r.get_data(as_text=True)).tags if name == "script"]
    assert scripts and all(attrs.get("nonce") == nonce for attrs in scripts)
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert nonce not in csp_of(client.get("/rq/")).get("script-src")[1]  # a fresh one each time


@pytest.fixture
def failed_rq_job(settings, rq_conn):
    """An RQ job in the failed registry of this test's queue; the queue's keys go afterwards."""
    from rq import Queue
    from rq.job import Job

    queue = Queue(settings.queue_name, connection=rq_conn)
    job = Job.create("os.getcwd", connection=rq_conn, origin=queue.name, id=f"{settings.key_prefix}-rq-failed")
    job.save()
    queue.failed_job_registry.add(job, exc_string="Traceback: it failed")
    yield queue, job
    job.delete()
    queue.delete(delete_jobs=True)
    for registry in (queue.failed_job_registry, queue.finished_job_registry):
        rq_conn.delete(registry.key)


def test_rq_dashboard_state_changes_take_a_post_from_this_site_only(client, failed_rq_job):
    queue, job = failed_rq_job
    url = f"/rq/requeue/{queue.name}"
    r = client.get(url)  # an <img src> on any page could do this
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert client.post(url, headers=headers).status_code == 403
        assert client.post(f"/rq/job/{job.id}/requeue", headers=headers).status_code == 403
    assert job.id in queue.failed_job_registry.get_job_ids() and queue.count == 0
    r = client.post(url, headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"})
    assert r.status_code == 200 and r.get_json()["count"] == 1
    assert queue.job_ids == [job.id]


def test_reads_allow_any_origin_and_writes_and_pages_do_not(client, jobs):
    """A page of another site may read (progress-client.js follows a job from anywhere);
    it never gets to read a write's answer, and the pages are not for it to read."""
    jobs.create_job("job-cors", "31452104", steps=STEPS)
    jobs.update("job-cors", progress_percent=100)
    elsewhere = {"Origin": "http://elsewhere.example"}
    seq = jobs.get("job-cors")["seq"]
    for path in ("/api/v1/jobs/job-cors", "/api/v1/jobs?limit=1", "/api/v1/jobs/job-cors/history",
                 "/api/v1/jobs/job-cors/events", f"/api/v1/jobs/job-cors/events?last_event_id={seq}",
                 "/api/v1/jobs/bad%20id", "/api/v1/openapi.json", "/static/progress-client.js"):
        r = client.get(path, headers=elsewhere)
        assert r.status_code in (200, 204, 400), (path, r.status_code)
        assert r.headers.get("Access-Control-Allow-Origin") == "*", path
    r = client.post("/api/v1/jobs/job-cors/cancel")
    assert r.status_code == 409 and "Access-Control-Allow-Origin" not in r.headers
    for path in ("/status/31452104/", "/status/31452104/?_json=1", "/"):
        assert "Access-Control-Allow-Origin" not in client.get(path, headers=elsewhere).headers, path
