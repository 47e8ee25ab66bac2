"""Jobs through a real RQ worker on the real Redis: submit, run, fail, time out, cancel.

The worker is ``ProgressSimpleWorker`` run in this process's main thread (RQ's
SimpleWorker: the job runs in the worker's process, its pipeline as a subprocess);
the job function reads its settings from the environment, set here to the test's
own key prefix and queue. Worker processes of their own are in test_cli_worker.py
and test_worker_lost.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import pytest
import redis
from helpers import read_pids, tree_script, wait_until, work_burst, worker_env
from rq.job import Job, JobStatus

from progress_service import InvalidInput, JobConflict, JobNotFound
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import cancel_job, submit_job
from worker import jobs
from worker.pipelines.papers import list_papers
from worker.process_tree import process_alive

FIVE = ["fetch-paper", "generate-script", "generate-audio", "generate-videos", "assemble-video"]

# A pipeline command that starts a grandchild, writes "pid grandchild" to argv[1], then waits.
TREE = tree_script("STEP 1/2 a", "PROGRESS 20 working")

FAIL = """
    import sys
    print("STEP a", flush=True)
    print("PROGRESS 30", flush=True)
    print("fetching ...", file=sys.stderr)
    print("ERROR: the archive refused the request (HTTP 503)", file=sys.stderr)
    sys.exit(5)
"""


@pytest.fixture
def store(connected_store):
    """Every test here is on the real Redis, through a client like production's."""
    return connected_store


@pytest.fixture
def env(monkeypatch, settings, tmp_path):
    """The worker's environment, which the job function reads: this test's prefix and queue."""
    values = worker_env(settings, tmp_path / "out")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("PROGRESS_REDIS_URL", "PROGRESS_REDIS_CLUSTER", "PROGRESS_JOB_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return values


def command_pipeline(monkeypatch, name: str, source: str, steps=("a", "b")) -> None:
    """Register a pipeline running ``source`` with the output folder as argv[1]."""
    def command(paper_id: str, out_dir: str, job_id: str) -> list[str]:
        return [sys.executable, "-c", textwrap.dedent(source), str(Path(out_dir) / "pids")]

    monkeypatch.setitem(PIPELINES, name, Pipeline(name=name, steps=tuple(steps), command=command))


def work(settings, conn, store) -> None:
    """A burst of ProgressSimpleWorker in this thread (``helpers.work_burst``)."""
    work_burst(settings, conn, store)


def submit_tree(settings, store, rq_conn, monkeypatch, name: str, **options) -> str:
    """Queue a job of pipeline t-tree (TREE, registered here) with id ``<prefix>-<name>``."""
    command_pipeline(monkeypatch, "t-tree", TREE)
    return submit_job(settings, "p1", "t-tree", store=store, redis_conn=rq_conn,
                      job_id=f"{settings.key_prefix}-{name}", **options)


def work_beside(settings, conn, store, task) -> None:
    """``work`` in this thread while ``task`` runs in another (it waits for what it needs);
    then ``task`` joined."""
    thread = threading.Thread(target=task)
    thread.start()
    try:
        work(settings, conn, store)
    finally:
        thread.join(30)


def ffmpeg_duration(video: Path) -> float:
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)],
                           capture_output=True, text=True, timeout=30)
    match = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", probe.stderr)
    assert match, probe.stderr
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def collapse(values):
    out = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


# -- the video pipeline end to end --------------------------------------------------


@pytest.mark.slow
def test_the_video_job_runs_through_rq_from_pending_to_completed(env, settings, store, rq_conn):
    paper = list_papers()[0].pmid
    job_id = submit_job(settings, paper, store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-video")
    # Created before it was queued: a status read right after submit finds it.
    snap = store.get(job_id)
    assert snap["status"] == "pending" and snap["steps"] == FIVE and snap["pipeline"] == "video"
    rq_job = Job.fetch(job_id, connection=rq_conn)
    assert rq_job.id == job_id and rq_job.get_status() == JobStatus.QUEUED
    assert rq_job.origin == settings.queue_name

    seen: list[dict] = []
    subscribed = threading.Event()

    def follow():
        for s in store.subscribe(job_id, timeout=120):
            seen.append(s)
            subscribed.set()

    metas: list[dict] = []
    done = threading.Event()

    def sample_meta():
        while not done.is_set():
            metas.append(dict(Job.fetch(job_id, connection=rq_conn).get_meta().get("progress") or {}))
            time.sleep(0.02)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert subscribed.wait(10)  # the subscriber is in place before the worker starts
    sampler = threading.Thread(target=sample_meta, daemon=True)
    sampler.start()
    try:
        work(settings, rq_conn, store)
    finally:
        done.set()
    follower.join(60)
    sampler.join(5)

    assert collapse([s["status"] for s in seen]) == ["pending", "running", "completed"]
    percents = [s["progress_percent"] for s in seen]
    assert all(a <= b for a, b in zip(percents, percents[1:], strict=False)), percents
    assert len(set(percents)) > 5  # it moved along the way, not in one jump
    dones = [s["completed_steps"] for s in seen]
    assert all(d == FIVE[: len(d)] for d in dones)  # always a prefix of the steps
    assert all(len(a) <= len(b) for a, b in zip(dones, dones[1:], strict=False))
    assert collapse([s["current_step"] for s in seen if s["current_step"]]) == FIVE

    final = seen[-1]
    assert final == store.get(job_id) | {"is_stale": False, "eta_seconds": None,
                                         "heartbeat_at": final["heartbeat_at"],
                                         "started_at": final["started_at"],
                                         "finished_at": final["finished_at"],
                                         "created_at": final["created_at"],
                                         "progress_updated_at": final["progress_updated_at"]}
    assert final["status"] == "completed" and final["completed_steps"] == FIVE
    video = Path(final["result"]["video_path"])
    assert video.name == f"{paper}.mp4" and video.parent == Path(env["PROGRESS_OUTPUT_DIR"]) / job_id
    assert video.is_file() and ffmpeg_duration(video) > 0
    assert final["result"]["video_url"] == video.as_uri() and final["result"]["exit_code"] == 0

    rq_job = Job.fetch(job_id, connection=rq_conn)
    assert rq_job.get_status() == JobStatus.FINISHED
    assert rq_job.return_value()["result"]["video_path"] == str(video)
    assert rq_job.meta["progress"] == {"percent": 100, "step": None}
    assert rq_job.meta["pipeline_process"]["pid"] > 0
    during = [m for m in metas if m and 0 < m.get("percent", 0) < 100]
    assert during and {m["step"] for m in during} <= set(FIVE)  # the dashboard saw it move


# -- submit ----------------------------------------------------------------------------


def test_submit_checks_its_input_before_creating_anything(settings, store, rq_conn):
    with pytest.raises(InvalidInput, match="unknown pipeline"):
        submit_job(settings, "31452104", "no-such-pipeline", store=store, redis_conn=rq_conn)
    with pytest.raises(ValueError, match="paper_id"):
        submit_job(settings, "../etc/passwd", store=store, redis_conn=rq_conn)
    with pytest.raises(ValueError, match="job_id"):
        submit_job(settings, "31452104", job_id="a b", store=store, redis_conn=rq_conn)
    assert store.recent_job_ids() == []
    assert rq_conn.llen(f"rq:queue:{settings.queue_name}") == 0


def test_submit_queues_one_rq_job_with_the_same_id_and_its_timeout(settings, store, rq_conn):
    job_id = f"{settings.key_prefix}-one"
    assert submit_job(settings, "31452104", store=store, redis_conn=rq_conn, job_id=job_id,
                      job_timeout=77) == job_id
    rq_job = Job.fetch(job_id, connection=rq_conn)
    assert rq_job.timeout == 77 and rq_job.func_name == "worker.jobs.run_pipeline"
    assert rq_job.args == ("31452104", "video")
    assert rq_job.meta["progress"] == {"percent": 0, "step": None}
    with pytest.raises(JobConflict):
        submit_job(settings, "31452104", store=store, redis_conn=rq_conn, job_id=job_id)
    assert rq_conn.llen(f"rq:queue:{settings.queue_name}") == 1  # the conflict queued nothing


def test_a_pipelines_own_timeout_is_its_jobs_default(settings, store, rq_conn, monkeypatch):
    monkeypatch.setitem(PIPELINES, "t-own", Pipeline(name="t-own", steps=("a", "b"),
                                                     command=lambda p, o, j: [], timeout=5))
    job_id = f"{settings.key_prefix}-own"
    submit_job(settings, "31452104", "t-own", store=store, redis_conn=rq_conn, job_id=job_id)
    assert Job.fetch(job_id, connection=rq_conn).timeout == 5
    with pytest.raises(ValueError, match="timeout"):
        Pipeline(name="t-bad", steps=("a",), command=lambda p, o, j: [], timeout=0)


def test_a_redis_that_does_not_answer_is_backend_unavailable(settings, store):
    from progress_service import BackendUnavailable

    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    job_id = f"{settings.key_prefix}-dead"
    with pytest.raises(BackendUnavailable):  # the workers' pipelines cannot be read: nothing is made
        submit_job(settings, "31452104", store=store, redis_conn=dead, job_id=job_id)
    assert store.get(job_id) is None


def test_a_queue_that_fails_after_the_job_is_made_marks_it_failed(settings, store, rq_conn, monkeypatch):
    from rq import Queue

    from progress_service import BackendUnavailable

    def down(*args, **kwargs):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(Queue, "enqueue_call", down)  # RQ's Redis goes away between check and enqueue
    job_id = f"{settings.key_prefix}-dead"
    with pytest.raises(BackendUnavailable):
        submit_job(settings, "31452104", store=store, redis_conn=rq_conn, job_id=job_id)
    snap = store.get(job_id)
    assert snap["status"] == "failed" and "could not queue" in snap["error"]


# -- failures ----------------------------------------------------------------------------


def test_a_failing_pipeline_fails_in_the_store_and_in_rq(env, settings, store, rq_conn, monkeypatch):
    command_pipeline(monkeypatch, "t-fail", FAIL)
    job_id = submit_job(settings, "p1", "t-fail", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-fail")
    work(settings, rq_conn, store)
    snap = store.get(job_id)
    assert snap["status"] == "failed" and snap["progress_percent"] == 30
    assert snap["error"].startswith("exit code 5: ")
    assert snap["error"].endswith("ERROR: the archive refused the request (HTTP 503)")
    rq_job = Job.fetch(job_id, connection=rq_conn)
    assert rq_job.get_status() == JobStatus.FAILED
    assert "PipelineFailed" in rq_job.latest_result().exc_string


MARKUP = """
    import sys
    print("STEP a", flush=True)
    print('<img src=x onerror="alert(1)"><script>alert(2)</script> & done', file=sys.stderr)
    sys.exit(1)
"""


def test_a_failure_text_reaches_rq_without_markup(env, settings, store, rq_conn, monkeypatch):
    """rq-dashboard shows RQ's exception text as HTML, unescaped: a pipeline's stderr opens no tag
    there. The store keeps the text as it was."""
    command_pipeline(monkeypatch, "t-markup", MARKUP)
    job_id = submit_job(settings, "p1", "t-markup", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-markup")
    work(settings, rq_conn, store)
    said = '<img src=x onerror="alert(1)"><script>alert(2)</script> & done'
    assert store.get(job_id)["error"] == f"exit code 1: {said}"
    exc_string = Job.fetch(job_id, connection=rq_conn).latest_result().exc_string
    assert "PipelineFailed: exit code 1: \u2039img src=x onerror=\"alert(1)\"\u203a\u2039script\u203a" in exc_string
    assert "<img" not in exc_string and "<script" not in exc_string


def test_the_rq_job_timeout_fails_the_job_and_kills_its_tree(env, settings, store, rq_conn,
                                                             monkeypatch, tmp_path):
    job_id = submit_tree(settings, store, rq_conn, monkeypatch, "slow", job_timeout=2)
    started = time.monotonic()
    work(settings, rq_conn, store)
    assert time.monotonic() - started < 15
    snap = store.get(job_id)
    assert snap["status"] == "failed" and snap["error"] == "timed out after 2 s"
    rq_job = Job.fetch(job_id, connection=rq_conn)
    assert rq_job.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in rq_job.latest_result().exc_string
    pids = read_pids(Path(env["PROGRESS_OUTPUT_DIR"]) / job_id / "pids")
    assert pids and not [p for p in pids if process_alive(p)]


def test_rq_failure_callback_fails_a_job_the_runner_could_not(env, settings, store, rq_conn):
    """A job that raised before its runner wrote anything (here: RQ's own timeout)."""
    from rq.timeouts import JobTimeoutException

    job_id = submit_job(settings, "p1", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-cb", job_timeout=9)
    store.update(job_id, status="running")
    rq_job = Job.fetch(job_id, connection=rq_conn)
    jobs.on_rq_failure(rq_job, rq_conn, JobTimeoutException, JobTimeoutException("slow"), None)
    snap = store.get(job_id)
    assert snap["status"] == "failed" and snap["error"] == "timed out after 9 s"
    jobs.on_rq_failure(rq_job, rq_conn, RuntimeError, RuntimeError("later"), None)
    assert store.get(job_id)["error"] == "timed out after 9 s"  # a finished job stays as it is


# -- cancel ----------------------------------------------------------------------------


def test_cancel_a_queued_job(env, settings, store, rq_conn, monkeypatch):
    job_id = submit_tree(settings, store, rq_conn, monkeypatch, "queued")
    snap = cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
    assert snap["status"] == "canceled" and snap["finished_at"]
    assert Job.fetch(job_id, connection=rq_conn).get_status() == JobStatus.CANCELED
    work(settings, rq_conn, store)  # nothing left to run
    assert not (Path(env["PROGRESS_OUTPUT_DIR"]) / job_id).exists()
    assert store.get(job_id)["status"] == "canceled"


def test_cancel_an_unknown_or_finished_job(env, settings, store, rq_conn):
    with pytest.raises(JobNotFound):
        cancel_job(settings, "no-such-job", store=store, redis_conn=rq_conn)
    job_id = submit_job(settings, "p1", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-twice")
    cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
    with pytest.raises(JobConflict, match="already finished"):
        cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
    with pytest.raises(ValueError):
        cancel_job(settings, "bad id", store=store, redis_conn=rq_conn)


def test_cancel_a_running_job_kills_its_tree_and_rq_records_it_stopped(env, settings, store,
                                                                         rq_conn, monkeypatch):
    job_id = submit_tree(settings, store, rq_conn, monkeypatch, "running")
    pids_file = Path(env["PROGRESS_OUTPUT_DIR"]) / job_id / "pids"
    answer = {}

    def cancel_when_running():
        pids = wait_until(lambda: read_pids(pids_file), timeout=20)
        answer["pids"] = pids
        answer["alive"] = pids and all(process_alive(p) for p in pids)
        answer["snap"] = cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
        answer["at"] = time.monotonic()

    work_beside(settings, rq_conn, store, cancel_when_running)  # returns once the job has ended
    assert answer["alive"] and answer["snap"]["status"] == "canceled"
    assert time.monotonic() - answer["at"] < 8
    assert not [p for p in answer["pids"] if process_alive(p)], "a process of the tree was left"
    assert store.get(job_id)["status"] == "canceled"
    assert Job.fetch(job_id, connection=rq_conn).get_status() == JobStatus.STOPPED


def test_rq_stop_command_alone_cancels_a_job_in_a_simple_worker(env, settings, store, rq_conn,
                                                                  monkeypatch):
    from rq.command import send_stop_job_command

    job_id = submit_tree(settings, store, rq_conn, monkeypatch, "stop")
    pids_file = Path(env["PROGRESS_OUTPUT_DIR"]) / job_id / "pids"
    answer = {}

    def stop_when_running():
        answer["pids"] = wait_until(lambda: read_pids(pids_file), timeout=20)
        send_stop_job_command(rq_conn, job_id)

    work_beside(settings, rq_conn, store, stop_when_running)
    assert answer["pids"] and not [p for p in answer["pids"] if process_alive(p)]
    snap = store.get(job_id)
    assert snap["status"] == "canceled" and snap["message"] == "stopped in RQ"
    assert Job.fetch(job_id, connection=rq_conn).get_status() == JobStatus.STOPPED
