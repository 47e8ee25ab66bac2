"""A worker that dies mid-job: the job goes stale, then fails as ``worker lost``, in RQ too.
And Redis that dies mid-run (a crash, SIGKILL): with AOF every job still completes.

The end-to-end tests run ``progress-service worker`` as a subprocess (through a
small launcher that registers slow test pipelines), SIGKILL it and its work
horse mid-job, and start another worker; or SIGKILL a Redis of the test's own and
start it again. Settings are short here:
PROGRESS_STALE_AFTER=1, PROGRESS_WORKER_LOST_AFTER=3.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import RestartableRedis, cli_env, read_pids, wait_until, write_worker_launcher
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from progress_service import ProgressStore
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import submit_job
from progress_service.store import connect
from worker.lost import WORKER_LOST, LostJobSweeper, kill_orphaned_tree, sweep_lost_jobs
from worker.process_tree import descendants, process_alive

ROOT = Path(__file__).resolve().parent.parent

# Steps a, b: announces a, then PROGRESS every 0.1 s for a minute; a grandchild sleeps in
# its process group, and a daemon (double-forked: no parent link, a session of its own)
# sleeps too. Writes "pid grandchild daemon" to argv[1].
SLOW = """
import os, subprocess, sys, time
stay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode()); os.close(w)
        time.sleep(120)
    os._exit(0)
os.close(w)
daemon = int(os.read(r, 32))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {stay.pid} {daemon}\\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("STEP 1/2 a", flush=True)
for i in range(600):
    print(f"PROGRESS {min(i / 10, 49):.1f}", flush=True)
    time.sleep(0.1)
"""


# Steps a, b over about three seconds, a PROGRESS line every 0.1 s.
STEADY = """
import time
print("STEP 1/2 a", flush=True)
for i in range(15):
    print(f"PROGRESS {i * 3}", flush=True)
    time.sleep(0.1)
print("STEP b", flush=True)
for i in range(15):
    print(f"PROGRESS {50 + i * 3}", flush=True)
    time.sleep(0.1)
"""


@pytest.fixture
def store(connected_store):
    """Every test here is on the real Redis, through a client like production's."""
    return connected_store


# -- the sweeper ---------------------------------------------------------------------


def test_the_sweeper_fails_only_running_jobs_without_a_heartbeat(real_redis, settings):
    fast = dataclasses.replace(settings, worker_lost_after=1.0)
    store = ProgressStore(connect(fast), fast)
    for job_id in ("silent", "beating", "waiting", "done"):
        store.create_job(job_id, "p", steps=["a"], pipeline="command")
    store.update("silent", status="running")
    store.update("beating", status="running")
    store.update("done", status="completed")
    started = time.monotonic()
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            store.heartbeat("beating")
            stop.wait(0.2)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        failed = wait_until(lambda: sweep_lost_jobs(store, fast), timeout=10, interval=0.05)
    finally:
        stop.set()
        beater.join()
    assert failed == ["silent"]
    assert time.monotonic() - started >= 0.9  # not before worker_lost_after
    snap = store.get("silent")
    assert snap["status"] == "failed" and snap["error"] == WORKER_LOST
    assert store.get("beating")["status"] == "running"
    assert store.get("waiting")["status"] == "pending"
    assert store.get("done")["status"] == "completed"
    assert sweep_lost_jobs(store, fast) == []  # once only
    store.client.close()


def test_a_job_its_runner_restored_is_not_failed_as_lost_before_its_next_heartbeat(store, settings):
    """After an empty Redis restart the runner restores its job with the job's own start
    time, long ago: the restore is its sign of life, or the sweeper fails it at once."""
    long_ago = store.server_time_ms() - 60_000
    store.restore_job("r", "p", ["a"], "command", seq_floor=4, created_at_ms=long_ago,
                      started_at_ms=long_ago, progress_percent=10)
    assert sweep_lost_jobs(store, settings) == []
    snap = store.get("r")
    assert snap["status"] == "running" and snap["heartbeat_at"] is not None


def test_the_sweeper_loop_survives_a_redis_that_does_not_answer(settings, caplog):
    dead = dataclasses.replace(settings, progress_redis_url="redis://127.0.0.1:1/0")
    store = ProgressStore(connect(dead), dead)
    sweeper = LostJobSweeper(store, dead)
    stop = threading.Event()
    thread = sweeper.start(stop)
    assert wait_until(lambda: "Redis is down" in caplog.text, timeout=10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_rq_abandoned_job_cleanup_agrees_with_the_store(monkeypatch, settings, store, rq_conn):
    """RQ's own path: StartedJobRegistry.cleanup() finds the job abandoned and calls
    its on_failure callback, which fails the store's job as ``worker lost``."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("PROGRESS_KEY_PREFIX", settings.key_prefix)
    monkeypatch.delenv("PROGRESS_REDIS_URL", raising=False)
    job_id = submit_job(settings, "p1", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-abandoned")
    store.update(job_id, status="running", current_step="fetch-paper")
    rq_job = Job.fetch(job_id, connection=rq_conn)
    rq_job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(settings.queue_name, connection=rq_conn)
    rq_conn.zadd(registry.key, {f"{job_id}:dead-execution": 1})  # its heartbeat long expired
    registry.cleanup()
    snap = store.get(job_id)
    assert snap["status"] == "failed" and snap["error"] == WORKER_LOST
    assert Job.fetch(job_id, connection=rq_conn).get_status() == JobStatus.FAILED


# -- a worker killed mid-job, end to end ---------------------------------------------


@pytest.fixture
def worker_env(settings, tmp_path):
    return cli_env(
        settings,
        PROGRESS_STALE_AFTER="1",
        PROGRESS_WORKER_LOST_AFTER="3",
        PROGRESS_OUTPUT_DIR=str(tmp_path / "out"),
    )


def start_worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    launcher = write_worker_launcher(tmp_path, {"t-slow": SLOW, "t-steady": STEADY})
    path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, str(launcher), "worker", *args], env=env, cwd=ROOT,
                            stdout=open(path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_an_orphaned_tree_is_found_by_its_runs_tag_not_by_its_job_id():
    """The sweeper (and a worker whose work horse died) kills a dead job's command by the
    tag its run recorded in the RQ job's meta. Another deployment's command of the same
    job id, PROGRESS_JOB_ID=j in its environment too, lives on."""
    tags = [f"PROGRESS_JOB_TAG={prefix}:j:{uuid.uuid4().hex[:16]}" for prefix in ("ours", "theirs")]
    commands = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=True,
                                 env={**os.environ, "PROGRESS_JOB_ID": "j", "PROGRESS_JOB_TAG": tag.split("=", 1)[1]})
                for tag in tags]
    ours, theirs = commands
    try:
        assert wait_until(lambda: all(os.getpgid(c.pid) == c.pid for c in commands), timeout=5)
        process = {"pid": ours.pid, "pgid": ours.pid, "host": socket.gethostname(), "tag": tags[0]}
        assert kill_orphaned_tree(process, "j", grace=1.0) == []
        assert ours.wait(5) is not None
        assert process_alive(theirs.pid), "the sweeper killed another deployment's command"
    finally:
        for command in commands:
            command.kill()
            command.wait(5)


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))


@pytest.mark.slow
def test_a_sigkilled_worker_leaves_a_stale_job_that_the_next_worker_fails_as_lost(
        settings, worker_env, store, rq_conn, tmp_path, monkeypatch):
    monkeypatch.setitem(PIPELINES, "t-slow",
                        Pipeline(name="t-slow", steps=("a", "b"), command=lambda p, o, j: []))
    first = start_worker(tmp_path, worker_env, "--no-mirror")
    second = None
    try:
        job_id = submit_job(settings, "p1", "t-slow", store=store, redis_conn=rq_conn,
                            job_id=f"{settings.key_prefix}-lost")
        assert wait_until(lambda: store.get(job_id)["progress_percent"] >= 1, timeout=30), logs(tmp_path)
        pids = read_pids(Path(worker_env["PROGRESS_OUTPUT_DIR"]) / job_id / "pids")
        assert pids and all(process_alive(p) for p in pids)
        horses = [p for p in descendants(first.pid) if p not in pids and p not in descendants(pids[0])]
        assert horses, "no work horse found"

        # The worker and its work horse die at once, as on a lost machine.
        os.kill(first.pid, signal.SIGKILL)
        for horse in horses:
            os.kill(horse, signal.SIGKILL)
        first.wait(10)

        # No worker runs: the job still reads running, and soon stale.
        stale = wait_until(lambda: (s := store.get(job_id))["is_stale"] and s, timeout=10)
        assert stale and stale["status"] == "running", store.get(job_id)
        assert Job.fetch(job_id, connection=rq_conn).get_status() == JobStatus.STARTED

        # A new worker: once it runs, the job is failed within worker_lost_after (3 s).
        second = start_worker(tmp_path, worker_env)  # with the mirror (PostgreSQL down: it waits)
        assert wait_until(lambda: "lost-job sweeper: every" in second.log_path.read_text(),
                          timeout=30), logs(tmp_path)
        running = time.monotonic()
        failed = wait_until(lambda: (s := store.get(job_id))["status"] == "failed" and s, timeout=20)
        took = time.monotonic() - running
        assert failed and failed["error"] == WORKER_LOST, (store.get(job_id), logs(tmp_path))
        assert took < settings.worker_lost_after, (took, logs(tmp_path))
        assert failed["progress_percent"] == stale["progress_percent"]  # nothing else changed

        # RQ agrees a moment later (the store is failed first: it decides who wins).
        assert wait_until(lambda: Job.fetch(job_id, connection=rq_conn).get_status()
                          == JobStatus.FAILED, timeout=5), logs(tmp_path)
        assert job_id in FailedJobRegistry(settings.queue_name, connection=rq_conn).get_job_ids()
        assert job_id not in StartedJobRegistry(settings.queue_name,
                                                connection=rq_conn).get_job_ids(cleanup=False)
        # The pipeline's tree outlived its work horse; the sweeper killed what was left.
        assert wait_until(lambda: not [p for p in pids if process_alive(p)], timeout=10)
        assert second.poll() is None, logs(tmp_path)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)
        for pid in (read_pids(Path(worker_env["PROGRESS_OUTPUT_DIR"]) / f"{settings.key_prefix}-lost"
                              / "pids") or []):
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "lost-job sweeper" in logs(tmp_path)


# -- Redis crashes mid-run -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_a_redis_crash_mid_run_with_aof_loses_no_job(aof, redis_server_bin, settings, tmp_path,
                                                     monkeypatch):
    """A worker, one job running and two queued, and Redis SIGKILLed and started again on
    the same port (README, "When things fail"). With AOF (as compose.yaml runs it) all three
    complete; without persistence the running one still completes (its runner re-creates
    it) but the queued ones are gone, with RQ's queue."""
    if redis_server_bin is None:
        from helpers import unavailable

        unavailable("no redis-server binary to start a throwaway Redis")
    monkeypatch.setitem(PIPELINES, "t-steady",
                        Pipeline(name="t-steady", steps=("a", "b"), command=lambda p, o, j: []))
    aof_dir = tmp_path / "redis-data" if aof else None
    if aof_dir is not None:
        aof_dir.mkdir()
    redis_server = RestartableRedis(redis_server_bin, aof_dir)
    own = dataclasses.replace(settings, redis_url=redis_server.url,
                              progress_redis_url=redis_server.url, worker_lost_after=10.0)
    env = cli_env(own, PROGRESS_WORKER_LOST_AFTER="10", PROGRESS_OUTPUT_DIR=str(tmp_path / "out"))
    store = ProgressStore(connect(own), own)
    worker = start_worker(tmp_path, env, "--no-mirror")
    try:
        job_ids = [submit_job(own, "p1", "t-steady", store=store, job_id=f"steady-{i}")
                   for i in range(3)]
        running = wait_until(lambda: (s := store.get(job_ids[0]))["progress_percent"] >= 20 and s,
                             timeout=30)
        assert running and running["status"] == "running", logs(tmp_path)
        assert [store.get(j)["status"] for j in job_ids[1:]] == ["pending", "pending"]

        redis_server.crash_and_restart()

        if aof:
            assert store.get(job_ids[1])["status"] == "pending"  # the queue came back too
            finished = wait_until(lambda: all(store.get(j)["status"] == "completed" for j in job_ids),
                                  timeout=60)
            assert finished, ([store.get(j) for j in job_ids], logs(tmp_path))
            assert store.get(job_ids[0])["seq"] > running["seq"]
            rq_conn = Redis.from_url(own.redis_url)
            try:
                assert wait_until(lambda: all(Job.fetch(j, connection=rq_conn).get_status()
                                              == JobStatus.FINISHED for j in job_ids), timeout=10)
            finally:
                rq_conn.close()
        else:
            assert store.get(job_ids[1]) is None and store.get(job_ids[2]) is None
            assert wait_until(lambda: (store.get(job_ids[0]) or {}).get("status") == "completed",
                              timeout=60), logs(tmp_path)
        assert worker.poll() is None, logs(tmp_path)  # the worker rode it out
    finally:
        stop_worker(worker)
        store.client.close()
        redis_server.stop()
