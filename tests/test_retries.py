"""Retries: ``attempt`` and ``retry_of`` on the job, a retry by request (Python, HTTP, CLI),
a resumable pipeline's retry starting with its done steps, and a job the store re-creates
keeping where it comes from. The worker's side (automatic retries, the video pipeline
resuming) is in test_retry_worker.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from helpers import REPO, cli_env, subscribed, wait_until
from rq.job import Job, JobStatus
from test_api import TOKEN, assert_error, build, pg_app, running_job  # noqa: F401 - pg_app: a fixture

from progress_service import InvalidInput, JobConflict, JobNotFound
from progress_service.models import DEFAULT_STEPS
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import submit_job
from progress_service.retries import backoff_seconds, retry_job

STEPS = list(DEFAULT_STEPS)


def failed_job(store, job_id="job-1", paper_id="31452104", steps_done=3, tags=()):
    """A video job that failed in step ``steps_done + 1``."""
    store.create_job(job_id, paper_id, steps=STEPS, tags=list(tags))
    store.update(job_id, status="running", current_step=STEPS[steps_done],
                 progress_percent=PIPELINES["video"].start_percent(steps_done))
    store.update(job_id, status="failed", error="generate-videos: out of disk")
    return job_id


# -- the fields, in the store -----------------------------------------------------------


def test_a_job_is_attempt_1_retrying_nothing_also_one_made_before_retries(store):
    snap = store.create_job("j1", "p1")
    assert (snap["attempt"], snap["retry_of"]) == (1, None)
    store.client.hdel(store.keys.job("j1"), "attempt", "retry_of")  # a hash from before retries
    assert (store.get("j1")["attempt"], store.get("j1")["retry_of"]) == (1, None)


def test_a_retry_carries_its_attempt_and_the_job_it_retries(store):
    snap = store.create_job("j2", "p1", attempt=2, retry_of="j1")
    assert (snap["attempt"], snap["retry_of"]) == (2, "j1")
    assert snap["status"] == "pending" and snap["progress_percent"] == 0 and snap["completed_steps"] == []


@pytest.mark.parametrize("kwargs, what", [
    ({"attempt": 0, "retry_of": "j1"}, "attempt"),
    ({"attempt": True, "retry_of": "j1"}, "attempt"),
    ({"attempt": 2}, "names the job it retries"),
    ({"retry_of": "j1"}, "names the job it retries"),
    ({"attempt": 2, "retry_of": "bad id"}, "retry_of"),
    ({"attempt": 2, "retry_of": "j1", "steps_done": 5}, "steps done"),
    ({"attempt": 2, "retry_of": "j1", "progress_percent": 12}, "steps_done"),
    ({"attempt": 2, "retry_of": "j1", "steps_done": -1}, "steps_done"),
])
def test_bad_attempt_arguments_are_refused_before_anything_is_written(store, kwargs, what):
    with pytest.raises(InvalidInput, match=what):
        store.create_job("j2", "p1", **kwargs)
    assert store.get("j2") is None


def test_a_resumed_retry_starts_pending_with_its_done_steps_and_says_so(store):
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.events("j2"))
    wait_until(lambda: subscribed(store.client, store.keys.events("j2")), what="the subscription")
    snap = store.create_job("j2", "p1", steps=STEPS, attempt=2, retry_of="j1", steps_done=3,
                            progress_percent=12.0, message="skipped a, b, c (done by attempt 1)")
    assert snap["status"] == "pending" and snap["current_step"] is None
    assert snap["completed_steps"] == STEPS[:3] and snap["progress_percent"] == 12
    messages = []
    wait_until(lambda: messages.append(pubsub.get_message(timeout=0.1)) or any(messages), what="the event")
    pubsub.close()
    event = json.loads(next(m for m in messages if m)["data"])
    assert event["attempt"] == 2 and event["retry_of"] == "j1" and event["completed_steps"] == STEPS[:3]
    [entry] = store.history("j2")
    assert entry["message"] == "skipped a, b, c (done by attempt 1)" and entry["progress_percent"] == 12
    # its run then goes on from there: the next step, at the same percent, is no regression
    result = store.update("j2", status="running", current_step="generate-videos", progress_percent=12.0)
    assert result.accepted and store.get("j2")["completed_steps"] == STEPS[:3]


def test_restore_job_keeps_batch_tags_attempt_and_retry_of(store):
    """A runner re-creating a job an empty Redis restart lost used to drop its batch and tags."""
    store.create_job("j2", "p1", steps=["a", "b"], batch_id="b1", tags=["nightly"], attempt=3, retry_of="j1")
    store.update("j2", status="running", current_step="b", progress_percent=60)
    lost = store.get("j2")
    store.client.delete(store.keys.job("j2"), store.keys.history("j2"))  # Redis restarted empty
    from progress_service.models import lineage_of

    snap = store.restore_job("j2", "p1", ["a", "b"], "tracked", seq_floor=lost["seq"],
                             current_step="b", progress_percent=60, **lineage_of(lost))
    assert (snap["batch_id"], snap["tags"], snap["attempt"], snap["retry_of"]) == ("b1", ["nightly"], 3, "j1")
    assert snap["status"] == "running" and snap["seq"] > lost["seq"]


def test_the_runner_re_creates_a_lost_job_with_its_batch_tags_and_attempt(store):
    from worker.runner.recovery import JobRecovery

    store.create_job("j2", "p1", steps=["a", "b"], batch_id="b1", tags=["t"], attempt=2, retry_of="j1")
    store.update("j2", status="running", current_step="a", progress_percent=10)
    recovery = JobRecovery(store, "j2")
    recovery.read_spec()
    recovery.last_seq = store.get("j2")["seq"]
    store.client.delete(store.keys.job("j2"), store.keys.history("j2"))
    recovery.recreate({"progress_percent": 20})
    snap = store.get("j2")
    assert (snap["batch_id"], snap["tags"], snap["attempt"], snap["retry_of"]) == ("b1", ["t"], 2, "j1")


# -- a retry by request (Python) --------------------------------------------------------


@pytest.fixture
def queue_store(connected_store):
    return connected_store


def test_retry_of_a_failed_job_is_a_new_queued_job_that_resumes(queue_store, settings, rq_conn):
    store = queue_store
    failed_job(store, tags=["team-a"])
    new_id = retry_job(settings, "job-1", store=store, redis_conn=rq_conn)
    snap = store.get(new_id)
    assert new_id != "job-1"
    assert (snap["attempt"], snap["retry_of"], snap["paper_id"], snap["pipeline"], snap["tags"]) == \
        (2, "job-1", "31452104", "video", ["team-a"])
    # video is resumable: the retry starts with the three done steps, its bar at their share
    assert snap["status"] == "pending" and snap["completed_steps"] == STEPS[:3]
    assert snap["progress_percent"] == PIPELINES["video"].start_percent(3) == 12
    assert snap["message"] == "skipped fetch-paper, generate-script, generate-audio (done by attempt 1)"
    assert store.history(new_id)[0]["message"] == snap["message"]
    assert Job.fetch(new_id, connection=rq_conn).get_status() == JobStatus.QUEUED
    # one retry per job: a second is a conflict naming the first; the retry itself can be retried
    with pytest.raises(JobConflict, match=new_id):
        retry_job(settings, "job-1", store=store, redis_conn=rq_conn)


def test_retry_of_a_canceled_job_of_a_plain_pipeline_starts_from_the_beginning(
        queue_store, settings, rq_conn, monkeypatch):
    store = queue_store
    monkeypatch.setitem(PIPELINES, "plain", Pipeline(name="plain", steps=("a", "b"),
                                                     command=lambda *_: ["true"]))
    store.create_job("job-p", "p1", steps=["a", "b"], pipeline="plain")
    store.update("job-p", status="running", current_step="b", progress_percent=50)
    store.update("job-p", status="canceled")
    snap = store.get(retry_job(settings, "job-p", store=store, redis_conn=rq_conn))
    assert snap["completed_steps"] == [] and snap["progress_percent"] == 0 and snap["message"] is None
    assert snap["attempt"] == 2


def test_only_a_failed_or_canceled_job_is_retried(queue_store, settings, rq_conn):
    store = queue_store
    running_job(store, "job-r")
    store.create_job("job-c", "p1")
    store.update("job-c", status="completed")
    for job_id, status in (("job-r", "running"), ("job-c", "completed")):
        with pytest.raises(JobConflict, match=f"is {status}"):
            retry_job(settings, job_id, store=store, redis_conn=rq_conn)
    with pytest.raises(JobNotFound):
        retry_job(settings, "no-such-job", store=store, redis_conn=rq_conn)
    store.create_job("job-t", "p1", steps=["a"], pipeline="tracked")  # a producer elsewhere reports it
    store.update("job-t", status="failed", error="boom")
    with pytest.raises(JobConflict, match="cannot be queued again: unknown pipeline 'tracked'"):
        retry_job(settings, "job-t", store=store, redis_conn=rq_conn)
    assert store.retried_by("job-t") is None
    assert store.recent_job_ids(10) == ["job-t", "job-c", "job-r"]  # nothing made


def test_backoff_doubles_and_is_capped():
    assert [backoff_seconds(a, 2.0) for a in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_seconds(40, 10.0) == 3600.0


@pytest.mark.parametrize("retries", [-1, 11, True, "3", 2.5])
def test_submit_refuses_a_bad_retry_count(queue_store, settings, rq_conn, retries):
    with pytest.raises(InvalidInput, match="retries must be a whole number from 0 to 10"):
        submit_job(settings, "31452104", store=queue_store, redis_conn=rq_conn, retries=retries)
    assert queue_store.recent_job_ids(10) == []


# -- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def app(settings, real_redis):
    app = build(dataclasses.replace(settings, api_token=TOKEN))
    yield app
    app.extensions["progress_events"].close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_http_retry_answers_202_with_the_new_attempt(app, rq_conn):
    store = app.extensions["progress"]
    failed_job(store)
    client = app.test_client()
    assert_error(client.post("/api/v1/jobs/job-1/retry"), 401)
    r = client.post("/api/v1/jobs/job-1/retry", headers=AUTH)
    assert r.status_code == 202, r.get_data(as_text=True)
    body = r.get_json()
    assert body["attempt"] == 2 and body["retry_of"] == "job-1"
    assert body["status_url"] == f"/api/v1/jobs/{body['job_id']}" and r.headers["Location"] == body["status_url"]
    snap = client.get(body["status_url"]).get_json()
    assert (snap["attempt"], snap["retry_of"], snap["completed_steps"]) == (2, "job-1", STEPS[:3])
    again = assert_error(client.post("/api/v1/jobs/job-1/retry", headers=AUTH), 409, "conflict")
    assert body["job_id"] in again["detail"]
    assert_error(client.post(f"{body['status_url']}/retry", headers=AUTH), 409, "conflict")  # pending
    # unknown to Redis, and PostgreSQL (which might know it) not answering: 503, never a false 404
    assert_error(client.post("/api/v1/jobs/no-such-job/retry", headers=AUTH), 503)
    assert_error(client.post("/api/v1/jobs/job-1/retry", headers=AUTH, json={"x": 1}), 400, "invalid_input")
    listed = client.get("/api/v1/jobs?paper_id=31452104").get_json()["jobs"]
    assert [(j["attempt"], j["retry_of"]) for j in listed] == [(2, "job-1"), (1, None)]


@pytest.mark.parametrize("retries", [-1, 11, "2", True, 1.5, None])
def test_http_submit_refuses_a_bad_retry_count(app, rq_conn, retries):
    r = app.test_client().post("/api/v1/jobs", headers=AUTH, json={"paper_id": "31452104", "retries": retries})
    body = assert_error(r, 400, "invalid_input")
    assert "retries must be a whole number from 0 to 10" in body["detail"]


def test_http_submit_takes_retries_but_not_for_a_tracked_job(app, rq_conn):
    client = app.test_client()
    r = client.post("/api/v1/jobs", headers=AUTH, json={"paper_id": "31452104", "retries": 2})
    assert r.status_code == 202
    assert Job.fetch(r.get_json()["job_id"], connection=rq_conn).meta["retries"] == 2
    r = client.post("/api/v1/jobs", headers=AUTH,
                    json={"paper_id": "p1", "enqueue": False, "steps": ["a"], "retries": 1})
    assert "tracked job" in assert_error(r, 400, "invalid_input")["detail"]


def test_http_retry_of_a_job_only_postgres_keeps(pg_app, real_redis, rq_conn):  # noqa: F811
    from progress_service.mirror import Mirror

    store = pg_app.extensions["progress"]
    failed_job(store, tags=["t1"])
    with Mirror(store, store.settings.database_url) as mirror:
        assert mirror.mirror_job("job-1")
        assert (mirror.fetch("job-1")["attempt"], mirror.fetch("job-1")["retry_of"]) == (1, None)
    real_redis.delete(store.keys.job("job-1"), store.keys.history("job-1"))  # PROGRESS_JOB_TTL later
    client = pg_app.test_client()
    assert_error(client.post("/api/v1/jobs/no-such-job/retry"), 404, "not_found")
    r = client.post("/api/v1/jobs/job-1/retry")
    assert r.status_code == 202, r.get_data(as_text=True)
    snap = store.get(r.get_json()["job_id"])
    assert (snap["attempt"], snap["retry_of"], snap["tags"], snap["completed_steps"]) == \
        (2, "job-1", ["t1"], STEPS[:3])
    # and its row, once it has ended, keeps both
    store.update(snap["job_id"], status="canceled")
    with Mirror(store, store.settings.database_url) as mirror:
        assert mirror.mirror_job(snap["job_id"])
        row = mirror.fetch(snap["job_id"])
    assert (row["attempt"], row["retry_of"]) == (2, "job-1")


# -- the command line ---------------------------------------------------------------------


def cli(settings, *args, **env):
    return subprocess.run([sys.executable, "-m", "progress_cli", *args], env=cli_env(settings, **env),
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_retry_prints_the_new_job_and_exits_by_sysexits(queue_store, settings, rq_conn, db_url):
    store = queue_store
    failed_job(store)
    r = cli(settings, "retry", "job-1")
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.strip()
    assert (store.get(new_id)["attempt"], store.get(new_id)["retry_of"]) == (2, "job-1")
    again = cli(settings, "retry", "job-1")
    assert again.returncode == 64 and new_id in again.stderr
    assert cli(settings, "retry", new_id).returncode == 64  # pending: not failed or canceled
    down = cli(settings, "retry", "no-such-job")  # not in Redis, and PostgreSQL not answering
    assert down.returncode == 69 and "postgres" in down.stderr.lower()
    assert cli(settings, "retry", "no-such-job", DATABASE_URL=db_url).returncode == 66
    bad = cli(settings, "submit", "31452104", "--retries", "11")
    assert bad.returncode == 64 and "--retries" in bad.stderr
    r = cli(settings, "submit", "31452104", "--retries", "3")
    assert r.returncode == 0, r.stderr
    assert Job.fetch(r.stdout.strip(), connection=rq_conn).meta["retries"] == 3
    batch = cli(settings, "submit", "31452104", "25719670", "--retries", "1")
    assert batch.returncode == 64 and "one PAPER_ID" in batch.stderr


def test_snapshot_fields_in_the_openapi_document_match_the_snapshot(store):
    from web.openapi_schemas import SCHEMAS

    snap = store.create_job("j1", "p1")
    assert {"attempt", "retry_of"} <= set(SCHEMAS["Snapshot"]["required"]) <= set(snap) | {"eta_source"}
    assert json.loads(json.dumps(snap))["attempt"] == 1
