"""Producers that are not Python (README, "HTTP API and events"): a tracked job made with ``"enqueue": false``
and reported on through ``POST /api/v1/jobs/<job_id>/progress``.

Through Flask's test client on the real Redis, and once through a real gunicorn server
by the README's own JavaScript producer, run by Node.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest
from helpers import REPO
from openapi_check import OpenApiClient
from test_sse import GunicornServer, server_env

from progress_service.store import ProgressStore
from web import create_app

TOKEN = "producer-token"
STEPS = ["extract", "transform", "load"]
SUBMIT_KEYS = {"job_id", "status_url", "events_url", "page_url"}


@pytest.fixture
def make_app(settings, real_redis):
    """``make_app(**settings_changes)``: the app on this test's settings; closed afterwards."""
    apps = []

    def make(**changes):
        apps.append(create_app(dataclasses.replace(settings, **changes)))
        apps[-1].config["TESTING"] = True
        apps[-1].test_client_class = OpenApiClient  # every answer checked against the document
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["progress_events"].close()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture
def store(client) -> ProgressStore:
    return client.application.extensions["progress"]


def create(client, **extra) -> str:
    r = client.post("/api/v1/jobs", json={"paper_id": "report-2025", "enqueue": False,
                                          "steps": STEPS, **extra})
    assert r.status_code == 202, r.get_json()
    assert set(r.get_json()) == SUBMIT_KEYS
    assert r.headers["Location"] == r.get_json()["status_url"]
    return r.get_json()["job_id"]


def report(client, job_id: str, **fields):
    r = client.post(f"/api/v1/jobs/{job_id}/progress", json=fields)
    return r.status_code, r.get_json()


def assert_error(answer: tuple[int, dict], status: int, what: str) -> None:
    code, body = answer
    assert code == status, body
    assert body["error"] == what, body


def test_a_producer_creates_a_job_no_worker_runs_and_reports_it_to_the_end(
        client, store, settings, real_redis):
    job_id = create(client)
    snap = store.get(job_id)
    assert (snap["status"], snap["pipeline"], snap["steps"]) == ("pending", "tracked", STEPS)
    assert real_redis.llen(f"rq:queue:{settings.queue_name}") == 0, "nothing was queued"

    assert report(client, job_id, current_step="extract") == (200, {"accepted": True, "reason": "ok", "seq": 2})
    assert store.get(job_id)["status"] == "running"
    code, body = report(client, job_id, current_step="transform", progress_percent=40,
                        message="1,200 rows")
    assert (code, body["accepted"], body["reason"]) == (200, True, "ok")
    seq = body["seq"]
    assert report(client, job_id, progress_percent=30) == (
        200, {"accepted": False, "reason": "regression", "seq": seq})
    assert report(client, job_id, current_step="extract")[1]["reason"] == "regression"
    assert report(client, job_id) == (200, {"accepted": True, "reason": "unchanged", "seq": seq})
    assert store.get(job_id)["heartbeat_at"] is not None, "a progress call is a heartbeat"

    code, body = report(client, job_id, status="completed", result={"rows": 1200})
    assert (code, body["accepted"]) == (200, True)
    snap = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert (snap["status"], snap["progress_percent"], snap["result"]) == ("completed", 100, {"rows": 1200})
    assert snap["completed_steps"] == STEPS
    assert report(client, job_id, progress_percent=100)[1] == {
        "accepted": False, "reason": "terminal", "seq": snap["seq"]}
    assert [e["current_step"] for e in store.history(job_id)][1:3] == ["extract", "transform"]


def test_a_tracked_job_may_name_its_pipeline(client, store):
    job_id = create(client, pipeline="nightly-report")
    assert store.get(job_id)["pipeline"] == "nightly-report"


@pytest.mark.parametrize("body, detail", [
    ({"progress_percent": 150}, "0 to 100"),
    ({"progress_percent": "40"}, "0 to 100"),
    ({"progress_percent": True}, "0 to 100"),
    ({"current_step": "publish"}, "publish"),
    ({"status": "done"}, "status must be one of"),
    ({"result": [1, 2]}, "result must be an object"),
    ({"message": 42}, "message must be a string"),
    ({"force": "yes"}, "force must be true or false"),
    ({"percent": 40}, "unknown field 'percent'"),
])
def test_an_invalid_update_is_a_400_and_changes_nothing(client, store, body, detail):
    job_id = create(client)
    before = store.get(job_id)["seq"]
    code, answer = report(client, job_id, **body)
    assert_error((code, answer), 400, "invalid_input")
    assert detail in answer["detail"]
    assert store.get(job_id)["seq"] == before


def test_a_body_that_is_not_an_object_is_a_400(client):
    job_id = create(client)
    r = client.post(f"/api/v1/jobs/{job_id}/progress", data="[40]", content_type="application/json")
    assert_error((r.status_code, r.get_json()), 400, "invalid_input")


def test_an_unknown_job_is_a_404_and_a_bad_id_a_400(client):
    assert_error(report(client, "no-such-job", progress_percent=10), 404, "not_found")
    assert_error(report(client, "-bad-id", progress_percent=10), 400, "invalid_input")


@pytest.mark.parametrize("body, detail", [
    ({"enqueue": False}, '"enqueue": false needs "steps"'),
    ({"steps": STEPS}, '"steps" go with "enqueue": false'),
    ({"enqueue": True, "steps": STEPS}, '"steps" go with "enqueue": false'),
    ({"enqueue": "no", "steps": STEPS}, "enqueue must be true or false"),
    ({"enqueue": False, "steps": []}, "at least one step"),
    ({"enqueue": False, "steps": ["a", "a"]}, "unique"),
    ({"enqueue": False, "steps": "a,b"}, "list of names"),
    ({"enqueue": False, "steps": STEPS, "pipeline": "not a name"}, "pipeline"),
])
def test_an_invalid_tracked_job_is_a_400(client, store, body, detail):
    r = client.post("/api/v1/jobs", json={"paper_id": "report-2025", **body})
    assert_error((r.status_code, r.get_json()), 400, "invalid_input")
    assert detail in r.get_json()["detail"]
    assert store.recent_job_ids(paper_id="report-2025") == []


def test_both_writes_need_the_token_when_one_is_set(make_app):
    app = make_app(api_token=TOKEN)
    client = app.test_client()
    body = {"paper_id": "report-2025", "enqueue": False, "steps": STEPS}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = client.post("/api/v1/jobs", json=body, headers=headers)
        assert_error((r.status_code, r.get_json()), 401, "unauthorized")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/v1/jobs", json=body, headers=auth)
    assert r.status_code == 202
    job_id = r.get_json()["job_id"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = client.post(f"/api/v1/jobs/{job_id}/progress", json={"progress_percent": 5},
                        headers=headers)
        assert_error((r.status_code, r.get_json()), 401, "unauthorized")
    assert app.extensions["progress"].get(job_id)["seq"] == 1, "nothing written without it"
    r = client.post(f"/api/v1/jobs/{job_id}/progress", json={"progress_percent": 5}, headers=auth)
    assert r.get_json()["accepted"] is True


def readme_block(marker: str) -> str:
    """The fenced code block of README.md whose first line is ``marker``."""
    text = (REPO / "README.md").read_text()
    for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.M | re.S):
        if block.startswith(marker):
            return block
    raise AssertionError(f"README.md has no code block starting {marker!r}")


@pytest.mark.slow
def test_the_readmes_javascript_producer_runs_a_job_to_the_end_through_gunicorn(
        real_redis_url, real_redis, key_prefix, settings, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH")
    script = tmp_path / "producer.mjs"
    script.write_text(readme_block("// producer.mjs"))
    server = GunicornServer(server_env(real_redis_url, key_prefix, PROGRESS_API_TOKEN=TOKEN),
                            log_path=tmp_path / "gunicorn.log")
    try:
        done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PROGRESS_URL": server.base,
                                   "PROGRESS_API_TOKEN": TOKEN})
        assert done.returncode == 0, done.stderr
        job_id = re.match(r"job (\w+): ", done.stdout).group(1)
        store = ProgressStore(real_redis, settings)
        snap = store.get(job_id)
        assert (snap["status"], snap["result"], snap["completed_steps"]) == (
            "completed", {"rows": 1200}, STEPS)
        stepped = [e["current_step"] for e in store.history(job_id) if e["current_step"]]
        assert list(dict.fromkeys(stepped)) == STEPS
        seen = [e["progress_percent"] for e in store.history(job_id)]
        assert seen == sorted(seen)

        unauthorized = subprocess.run([node, str(script)], capture_output=True, text=True,
                                      timeout=60, env={"PATH": "/usr/bin:/bin",
                                                       "PROGRESS_URL": server.base})
        assert unauthorized.returncode != 0 and "401" in unauthorized.stderr
    finally:
        server.stop()
