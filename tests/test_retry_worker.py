"""Retries through a real RQ worker: automatic retries with backoff, and the ``video``
pipeline's retry resuming after the steps the failed attempt completed.

The worker is ``ProgressSimpleWorker`` in bursts in this thread (``helpers.work_burst``);
with RQ's scheduler, each burst first queues the retries whose backoff is over.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from helpers import wait_until, work_burst, worker_env
from test_worker_rq import work_beside

from progress_service import retries
from progress_service.durations import job_duration, step_durations
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import cancel_job, submit_job
from progress_service.retries import retry_job

VIDEO_STEPS = list(PIPELINES["video"].steps)
SKIPPED = VIDEO_STEPS[:3]  # fetch-paper, generate-script, generate-audio: done before generate-videos


@pytest.fixture
def store(connected_store):
    return connected_store


@pytest.fixture
def env(monkeypatch, settings, tmp_path):
    values = worker_env(settings, tmp_path / "out", PROGRESS_RETRY_BACKOFF="0.2")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("PROGRESS_REDIS_URL", "PROGRESS_REDIS_CLUSTER", "PROGRESS_JOB_TIMEOUT",
                 "VIDEO_PIPELINE_FAIL_AT"):
        monkeypatch.delenv(name, raising=False)
    return values


def script_pipeline(monkeypatch, name: str, source: str, folder: Path) -> None:
    """Register pipeline ``name`` (steps a, b) running ``source`` with ``folder`` as argv[1]."""
    def command(paper_id: str, out_dir: str, *_job_id: str) -> list[str]:
        return [sys.executable, "-c", textwrap.dedent(source), str(folder)]

    monkeypatch.setitem(PIPELINES, name, Pipeline(name=name, steps=("a", "b"), command=command))


# Fails (exit 5) on its first two runs, then succeeds: each run leaves a file in argv[1].
FLAKY = """
    import json, pathlib, sys
    folder = pathlib.Path(sys.argv[1])
    runs = len(list(folder.glob("run-*"))) + 1
    (folder / f"run-{runs}").write_text("")
    print("STEP a", flush=True)
    if runs < 3:
        print(f"run {runs}: the archive is busy", file=sys.stderr)
        sys.exit(5)
    print("STEP b", flush=True)
    print(json.dumps({"result": {"runs": runs}}), flush=True)
"""

REFUSES = """
    import sys
    print("STEP a", flush=True)
    print("no such record", file=sys.stderr)
    sys.exit(65)
"""

WAITS = """
    import pathlib, sys, time
    print("STEP a", flush=True)
    (pathlib.Path(sys.argv[1]) / "started").write_text("")
    time.sleep(60)
"""


def attempts_of(store, paper_id: str) -> list[dict]:
    """The paper's jobs, first attempt first."""
    return sorted(store.list_jobs(paper_id=paper_id), key=lambda s: s["attempt"])


def test_a_failure_is_retried_with_backoff_until_it_succeeds(store, settings, rq_conn, env, monkeypatch,
                                                             tmp_path):
    script_pipeline(monkeypatch, "t-flaky", FLAKY, tmp_path)
    delays = []  # what each retry was queued with: its backoff, which RQ's scheduler waits out

    def spy(*args, **kwargs):
        delays.append(kwargs["delay"])
        return submit_job(*args, **kwargs)

    monkeypatch.setattr(retries, "submit_job", spy)
    first = submit_job(settings, "p-flaky", "t-flaky", store=store, redis_conn=rq_conn, retries=3,
                       job_id=f"{settings.key_prefix}-flaky")

    def settled() -> bool:
        work_burst(settings, rq_conn, store, with_scheduler=True)
        jobs = attempts_of(store, "p-flaky")
        return jobs[-1]["status"] == "completed"

    wait_until(settled, timeout=60, interval=0.1, what="the third attempt to complete")
    jobs = attempts_of(store, "p-flaky")
    assert [(j["attempt"], j["status"]) for j in jobs] == [(1, "failed"), (2, "failed"), (3, "completed")]
    assert jobs[0]["job_id"] == first and jobs[0]["retry_of"] is None
    assert [j["retry_of"] for j in jobs[1:]] == [jobs[0]["job_id"], jobs[1]["job_id"]]
    assert jobs[2]["result"]["runs"] == 3
    # each retry waited, twice as long as the one before (PROGRESS_RETRY_BACKOFF=0.2); a plain
    # pipeline's retry skips nothing
    assert delays == [0.2, 0.4]
    assert [store.history(j["job_id"])[0].get("message") for j in jobs[1:]] == [None, None]
    from rq.job import Job

    enqueued = [Job.fetch(j["job_id"], connection=rq_conn) for j in jobs]
    assert [e.meta["retries"] for e in enqueued] == [3, 2, 1]
    gaps = [(store_ms(jobs[i + 1]["started_at"]) - store_ms(jobs[i]["finished_at"])) / 1000 for i in (0, 1)]
    # for the record (RQ's scheduler keeps whole seconds: a sub-second backoff may end at once)
    print(f"\nautomatic retries: started {gaps[0]:.2f} s, then {gaps[1]:.2f} s after the failure "
          "(backoff 0.2 s, 0.4 s)")


def store_ms(iso: str) -> int:
    from progress_service.models import ms_from_iso

    value = ms_from_iso(iso)
    assert value is not None
    return value


def test_a_command_that_refuses_its_input_is_not_retried(store, settings, rq_conn, env, monkeypatch, tmp_path):
    script_pipeline(monkeypatch, "t-refuses", REFUSES, tmp_path)
    submit_job(settings, "p-refuses", "t-refuses", store=store, redis_conn=rq_conn, retries=2)
    work_burst(settings, rq_conn, store, with_scheduler=True)
    jobs = attempts_of(store, "p-refuses")
    assert [(j["attempt"], j["status"]) for j in jobs] == [(1, "failed")]
    assert "65" in jobs[0]["error"]


def test_a_canceled_job_is_not_retried(store, settings, rq_conn, env, monkeypatch, tmp_path):
    script_pipeline(monkeypatch, "t-waits", WAITS, tmp_path)
    job_id = submit_job(settings, "p-waits", "t-waits", store=store, redis_conn=rq_conn, retries=2,
                        job_id=f"{settings.key_prefix}-waits")

    def cancel_when_running() -> None:
        wait_until(lambda: (tmp_path / "started").exists(), timeout=20, what="the command to start")
        cancel_job(settings, job_id, store=store, redis_conn=rq_conn)

    work_beside(settings, rq_conn, store, cancel_when_running)
    work_burst(settings, rq_conn, store, with_scheduler=True)
    jobs = attempts_of(store, "p-waits")
    assert [(j["attempt"], j["status"]) for j in jobs] == [(1, "canceled")]
    assert store.retried_by(job_id) is None


def test_a_video_job_failed_at_generate_videos_resumes_on_retry(store, settings, rq_conn, env, monkeypatch):
    """The must-show: fails at generate-videos; its retry completes without re-running the three
    steps before (their files untouched, and no history entry of the retry names them), and the
    fresh-vs-retry times are printed for the record (not asserted: a shared machine's timings)."""
    out = Path(env["PROGRESS_OUTPUT_DIR"])
    monkeypatch.setenv("VIDEO_PIPELINE_FAIL_AT", "generate-videos")  # read when a run starts
    failing = submit_job(settings, "34265844", "video", store=store, redis_conn=rq_conn)
    work_burst(settings, rq_conn, store)
    monkeypatch.delenv("VIDEO_PIPELINE_FAIL_AT")
    failed = store.get(failing)
    assert failed["status"] == "failed" and "failure injected at generate-videos" in failed["error"]
    assert failed["completed_steps"] == SKIPPED
    outputs = {name: (out / failing / name).stat().st_mtime_ns
               for name in ("paper.json", "script.json", "narration.wav")}

    retry = retry_job(settings, failing, store=store, redis_conn=rq_conn)
    assert store.get(retry)["progress_percent"] == PIPELINES["video"].start_percent(3)
    fresh = submit_job(settings, "34265844", "video", store=store, redis_conn=rq_conn)
    work_burst(settings, rq_conn, store)
    done, fresh_done = store.get(retry), store.get(fresh)
    assert done["status"] == "completed" and fresh_done["status"] == "completed", (done, fresh_done)
    assert (done["attempt"], done["retry_of"]) == (2, failing)
    assert Path(done["result"]["video_path"]).stat().st_size > 0
    # the three steps did not run again: their files in the retry's folder are the failed
    # attempt's, to the nanosecond, and unchanged there too
    for name, mtime in outputs.items():
        assert (out / retry / name).stat().st_mtime_ns == mtime, name
        assert (out / failing / name).stat().st_mtime_ns == mtime, name
    history = store.history(retry)
    assert history[0]["message"] == "skipped fetch-paper, generate-script, generate-audio (done by attempt 1)"
    assert history[0]["status"] == "pending" and history[0]["progress_percent"] == 12
    ran = [e["current_step"] for e in history if e["current_step"]]
    assert ran[0] == "generate-videos" and not set(ran) & set(SKIPPED), ran
    percents = [e["progress_percent"] for e in history]
    assert percents == sorted(percents)  # the bar never went back below the skipped steps' share
    steps_retry = step_durations(history, VIDEO_STEPS)
    steps_fresh = step_durations(store.history(fresh), VIDEO_STEPS)
    assert set(steps_retry) == set(VIDEO_STEPS[3:]) and set(steps_fresh) == set(VIDEO_STEPS), \
        (steps_retry, steps_fresh)
    print(f"\nvideo job, fresh: {job_duration(fresh_done):.2f} s running "
          f"({', '.join(f'{k} {v:.2f}' for k, v in steps_fresh.items())})"
          f"\nvideo job, retry after a failure at generate-videos: {job_duration(done):.2f} s running "
          f"({', '.join(f'{k} {v:.2f}' for k, v in steps_retry.items())})")


def test_a_job_failed_as_worker_lost_is_retried_when_it_has_retries_left(store, settings, rq_conn, env):
    import dataclasses

    from worker.lost import WORKER_LOST, sweep_lost_jobs

    fast = dataclasses.replace(settings, worker_lost_after=1.0, retry_backoff=0.2)
    lost = submit_job(fast, "31452104", store=store, redis_conn=rq_conn, retries=1)
    plain = submit_job(fast, "25719670", store=store, redis_conn=rq_conn)
    for job_id in (lost, plain):
        store.update(job_id, status="running", current_step=VIDEO_STEPS[0])  # then its worker is killed
    swept = wait_until(lambda: sweep_lost_jobs(store, fast, rq_connection=rq_conn,
                                               queue_names=[fast.queue_name]), timeout=10)
    assert sorted(swept) == sorted([lost, plain])
    assert store.get(lost)["error"] == WORKER_LOST
    retry = store.retried_by(lost)
    assert retry is not None and store.retried_by(plain) is None
    snap = store.get(retry)
    assert (snap["attempt"], snap["retry_of"], snap["status"]) == (2, lost, "pending")
    assert snap["message"] == "starts in 0.2 s"


def test_a_job_its_worker_refuses_is_not_retried(store, settings, rq_conn, env, monkeypatch, tmp_path):
    """Submitted with steps a, b; the worker's pipeline of that name has other steps: refused."""
    script_pipeline(monkeypatch, "t-changed", FLAKY, tmp_path)
    job_id = submit_job(settings, "p-changed", "t-changed", store=store, redis_conn=rq_conn, retries=2)
    monkeypatch.setitem(PIPELINES, "t-changed", Pipeline(name="t-changed", steps=("a", "b", "c"),
                                                         command=lambda *_: ["true"]))
    work_burst(settings, rq_conn, store, with_scheduler=True)
    jobs = attempts_of(store, "p-changed")
    assert [(j["attempt"], j["status"]) for j in jobs] == [(1, "failed")]
    assert "steps" in jobs[0]["error"] and store.retried_by(job_id) is None
