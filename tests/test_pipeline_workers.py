"""A user's own pipeline through the queue, and the web, the workers and the submitters agreeing
on which pipelines exist: workers announce theirs, a submit of one they do not know is refused.

On the real Redis, each test under its own key prefix and queue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import cli_env, wait_until
from test_api import build
from test_cli_worker import cli, logs, start_worker, stop_worker
from test_worker_rq import work

from progress_cli import exit_codes
from progress_service import InvalidInput
from progress_service.pipeline_workers import announce, live_workers, withdraw
from progress_service.pipelines import Pipeline, load_pipelines
from progress_service.queue import submit_batch, submit_job

# The user's program: STEP and PROGRESS lines, what it was given kept in its output folder.
SCRIPT = """
import json, pathlib, sys
paper_id, out_dir = sys.argv[1], sys.argv[2]
print("STEP fetch", flush=True)
print("PROGRESS 10 fetching", flush=True)
print("STEP crunch", flush=True)
out = pathlib.Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
print("STEP publish", flush=True)
print(json.dumps({"result": {"paper": paper_id}}), flush=True)
"""

STEPS = ["fetch", "crunch", "publish"]


def pipelines_file(tmp_path: Path, *names: str, steps=STEPS, file: str = "pipelines.toml") -> Path:
    """A PROGRESS_PIPELINES file of pipelines ``names``, each running SCRIPT with weights 1, 2, 1."""
    script = tmp_path / "own_pipeline.py"
    script.write_text(textwrap.dedent(SCRIPT))
    tables = []
    for name in names:
        tables.append(textwrap.dedent(f"""\
            [pipelines.{name}]
            steps = {json.dumps(list(steps))}
            weights = {json.dumps([1, 2, 1][:len(steps)])}
            command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, "{{paper_id}}",
                       "{{out_dir}}", "--job={{job_id}}"]
            timeout = 120
            description = "a test's own pipeline"
            """))
    path = tmp_path / file
    path.write_text("\n".join(tables))
    return path


@pytest.fixture
def store(connected_store):
    return connected_store


@pytest.fixture
def worker_env(monkeypatch, settings, tmp_path):
    """The environment the job function reads (Settings.from_env): the test's prefix and queue."""
    values = cli_env(settings, PROGRESS_WORKER_LOST_AFTER="3", PROGRESS_OUTPUT_DIR=str(tmp_path / "out"))
    for name in [n for n in os.environ if n.startswith("PROGRESS_")]:
        monkeypatch.delenv(name)
    for name in ("REDIS_URL", "DATABASE_URL", "PROGRESS_KEY_PREFIX", "PROGRESS_QUEUE",
                 "PROGRESS_MIN_INTERVAL", "PROGRESS_WORKER_LOST_AFTER", "PROGRESS_OUTPUT_DIR"):
        monkeypatch.setenv(name, values[name])
    return values


def queued(rq_conn, settings) -> int:
    return rq_conn.llen(f"rq:queue:{settings.queue_name}")


# -- a pipeline of the user's own, through the queue ------------------------------------


def test_a_pipeline_from_a_toml_file_runs_through_the_queue(settings, store, rq_conn, worker_env,
                                                            tmp_path, monkeypatch):
    path = pipelines_file(tmp_path, "t-own")
    monkeypatch.setenv("PROGRESS_PIPELINES", str(path))  # the worker's
    settings = dataclasses.replace(settings, pipelines_file=str(path))  # the submitter's
    job_id = submit_job(settings, "31452104", "t-own", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-own")
    snap = store.get(job_id)
    assert (snap["status"], snap["pipeline"], snap["steps"]) == ("pending", "t-own", STEPS)
    work(settings, rq_conn, store)  # a real RQ worker, in burst mode

    snap = store.get(job_id)
    assert snap["status"] == "completed", snap
    assert snap["completed_steps"] == STEPS and snap["result"]["paper"] == "31452104"
    out_dir = Path(worker_env["PROGRESS_OUTPUT_DIR"]).resolve() / job_id
    # each placeholder was filled in, one argument each
    assert json.loads((out_dir / "argv.json").read_text()) == ["31452104", str(out_dir), f"--job={job_id}"]
    # the weights 1, 2, 1 shaped the bar: "STEP crunch" is 25 %, "STEP publish" 75 %
    percents = [h["progress_percent"] for h in store.history(job_id)]
    assert 25 in percents and 75 in percents and percents[-1] == 100


def test_a_worker_that_does_not_know_the_pipeline_fails_the_job_saying_why(
        settings, store, rq_conn, worker_env, tmp_path, monkeypatch):
    """Queued while no worker was live; the worker that takes it lacks the pipeline, or has
    other steps for it: the job fails with a message, and no command runs."""
    path = pipelines_file(tmp_path, "t-own")
    settings = dataclasses.replace(settings, pipelines_file=str(path))
    lacking = submit_job(settings, "p1", "t-own", store=store, redis_conn=rq_conn,
                         job_id=f"{settings.key_prefix}-lacking")
    work(settings, rq_conn, store)  # the worker's environment has no PROGRESS_PIPELINES
    snap = store.get(lacking)
    assert snap["status"] == "failed" and "unknown pipeline 't-own'" in snap["error"]

    other = pipelines_file(tmp_path, "t-own", steps=["fetch", "publish"], file="other.toml")
    monkeypatch.setenv("PROGRESS_PIPELINES", str(other))
    differs = submit_job(settings, "p1", "t-own", store=store, redis_conn=rq_conn,
                         job_id=f"{settings.key_prefix}-differs")
    work(settings, rq_conn, store)
    snap = store.get(differs)
    assert snap["status"] == "failed" and "has steps ['fetch', 'publish'] on this worker" in snap["error"]
    assert not (Path(worker_env["PROGRESS_OUTPUT_DIR"]) / differs / "argv.json").exists()


# -- the submit's check against the live workers -------------------------------------------


def own(name: str, steps=("a", "b")) -> Pipeline:
    return Pipeline(name=name, steps=tuple(steps), command=lambda p, o, j: ["prog", p])


def test_a_submit_is_refused_unless_every_live_worker_knows_the_pipeline(settings, store, rq_conn,
                                                                          tmp_path):
    path = pipelines_file(tmp_path, "t-own", "t-new")
    settings = dataclasses.replace(settings, pipelines_file=str(path))
    registry = load_pipelines(settings)

    def submit(pipeline: str, name: str) -> str:
        return submit_job(settings, "p1", pipeline, store=store, redis_conn=rq_conn,
                          job_id=f"{settings.key_prefix}-{name}")

    # not known here at all
    with pytest.raises(InvalidInput, match="unknown pipeline 'nope': known pipelines are"):
        submit("nope", "nope")
    # no live worker: queued, to wait for one
    assert submit("t-new", "first") and queued(rq_conn, settings) == 1

    announce(rq_conn, settings, "w-old", {"video": registry["video"], "t-own": registry["t-own"]},
             ttl=120)
    announce(rq_conn, settings, "w-new", registry, ttl=120)
    assert set(live_workers(rq_conn, settings)) == {"w-old", "w-new"}
    with pytest.raises(InvalidInput) as caught:
        submit("t-new", "refused")
    message = str(caught.value)
    assert "pipeline 't-new' is unknown to 1 of the 2 live workers" in message
    assert "w-old" in message and f"queue {settings.queue_name!r}" in message
    assert store.get(f"{settings.key_prefix}-refused") is None and queued(rq_conn, settings) == 1
    with pytest.raises(InvalidInput, match="unknown to 1 of the 2 live workers"):
        submit_batch(settings, ["p1", "p2"], "t-new", store=store, redis_conn=rq_conn)
    assert queued(rq_conn, settings) == 1

    # known to both: accepted
    assert submit("t-own", "known")
    # a worker with other steps for it
    announce(rq_conn, settings, "w-odd", {"t-own": own("t-own", ("fetch", "publish"))}, ttl=120)
    with pytest.raises(InvalidInput, match=r"has steps \['fetch', 'crunch', 'publish'\] here, but "
                                           r"worker w-odd .* knows it with steps \['fetch', 'publish'\]"):
        submit("t-own", "odd")
    # a worker that stops withdraws; one that dies expires
    withdraw(rq_conn, settings, "w-odd")
    withdraw(rq_conn, settings, "w-old")
    assert submit("t-new", "second")
    announce(rq_conn, settings, "w-dying", {"video": registry["video"]}, ttl=0.5)  # then never again
    assert wait_until(lambda: set(live_workers(rq_conn, settings)) == {"w-new"}, timeout=10)
    assert submit("t-new", "third") and queued(rq_conn, settings) == 4


def test_the_api_lists_pipelines_and_refuses_one_the_workers_do_not_know(settings, real_redis, rq_conn,
                                                                        tmp_path):
    path = pipelines_file(tmp_path, "t-own", "t-new")
    settings = dataclasses.replace(settings, pipelines_file=str(path))
    app = build(settings)  # its test client checks every answer against the OpenAPI document
    try:
        client = app.test_client()
        listed = client.get("/api/v1/pipelines").get_json()
        assert listed["live_workers"] == 0 and listed["queue"] == settings.queue_name
        by_name = {p["name"]: p for p in listed["pipelines"]}
        assert list(by_name) == ["video", "t-own", "t-new"]
        assert by_name["t-own"]["steps"] == STEPS and by_name["t-own"]["weights"] == [1, 2, 1]
        assert by_name["t-own"]["source"] == str(path) and by_name["video"]["source"] == "bundled"
        assert by_name["t-own"]["known_to_workers"] is None

        registry = load_pipelines(settings)
        announce(rq_conn, settings, "w-1", {"video": registry["video"], "t-own": registry["t-own"]},
                 ttl=120)
        by_name = {p["name"]: p for p in client.get("/api/v1/pipelines").get_json()["pipelines"]}
        assert by_name["t-own"]["workers"] == {"live": 1, "knowing": 1}
        assert by_name["t-own"]["known_to_workers"] is True
        assert by_name["t-new"]["known_to_workers"] is False

        r = client.post("/api/v1/jobs", json={"paper_id": "p1", "pipeline": "t-new"})
        assert r.status_code == 400 and r.get_json()["error"] == "invalid_input"
        assert "pipeline 't-new' is unknown to 1 of the 1 live workers" in r.get_json()["detail"]
        r = client.post("/api/v1/batches", json={"paper_ids": ["p1", "p2"], "pipeline": "t-new"})
        assert r.status_code == 400 and "unknown to 1 of the 1 live workers" in r.get_json()["detail"]
        r = client.post("/api/v1/jobs", json={"paper_id": "p1", "pipeline": "t-gone"})
        assert r.status_code == 400 and "unknown pipeline 't-gone'" in r.get_json()["detail"]
        assert queued(rq_conn, settings) == 0
        r = client.post("/api/v1/jobs", json={"paper_id": "p1", "pipeline": "t-own"})
        assert r.status_code == 202 and queued(rq_conn, settings) == 1
    finally:
        app.extensions["progress_events"].close()


def test_the_worker_command_announces_its_pipelines_while_it_lives(settings, store, rq_conn, tmp_path):
    """A real ``progress-service worker``: a submitter with one more pipeline in its file is
    refused it (64), runs the one they share, and the worker withdraws when it stops."""
    worker_file = pipelines_file(tmp_path, "t-own")
    submitter_file = pipelines_file(tmp_path, "t-own", "t-new", file="submitter.toml")
    env = cli_env(settings, PROGRESS_WORKER_LOST_AFTER="3", PROGRESS_OUTPUT_DIR=str(tmp_path / "out"))
    worker = start_worker(tmp_path, {**env, "PROGRESS_PIPELINES": str(worker_file)}, "--no-mirror")
    try:
        assert wait_until(lambda: live_workers(rq_conn, settings), timeout=30), logs(tmp_path)
        (announced,) = live_workers(rq_conn, settings).values()
        assert announced == {"video": list(load_pipelines(settings)["video"].steps), "t-own": STEPS}

        submitter = {**env, "PROGRESS_PIPELINES": str(submitter_file)}
        done = cli("submit", "p1", "--pipeline", "t-new", env=submitter)
        assert done.returncode == exit_codes.USAGE, done.stderr
        assert "pipeline 't-new' is unknown to 1 of the 1 live workers" in done.stderr
        done = cli("submit", "p1", "--pipeline", "t-own", "--wait", "--timeout", "60", env=submitter)
        assert done.returncode == 0, done.stderr + logs(tmp_path)
        assert store.get(done.stdout.strip())["status"] == "completed"
    finally:
        assert stop_worker(worker) == 0, logs(tmp_path)
    assert live_workers(rq_conn, settings) == {}
