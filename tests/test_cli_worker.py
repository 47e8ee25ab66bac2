"""``progress-service worker|submit|run|papers`` as a user runs them, and the terminal bar.

The commands run as subprocesses against the real Redis, with the test's own key
prefix and queue. Where a worker needs a test pipeline, it is started through a
small launcher that registers one before handing over to the CLI.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import cli_env, read_pids, tree_script, wait_until, write_worker_launcher
from rq import Worker
from rq.job import Job, JobStatus

from progress_cli import exit_codes
from progress_cli.terminal import exit_code_for, follow_job, render_line
from progress_service import JobNotFound
from progress_service.mirror import Mirror
from progress_service.pipelines import PIPELINES, Pipeline
from progress_service.queue import cancel_job, submit_job, waiting_queue
from worker.pipelines.papers import list_papers
from worker.process_tree import process_alive

ROOT = Path(__file__).resolve().parent.parent

# Starts a grandchild in its process group, writes "pid grandchild" to argv[1], waits.
TREE = tree_script("STEP 1/2 a", "PROGRESS 25 waiting")


@pytest.fixture
def store(connected_store):
    """Every test here is on the real Redis, through a client like production's."""
    return connected_store


@pytest.fixture
def env(settings, tmp_path):
    return cli_env(
        settings,
        PROGRESS_WORKER_LOST_AFTER="3",
        PROGRESS_JOB_TTL="300",  # RQ keeps results as long: jobs with random ids expire soon
        PROGRESS_OUTPUT_DIR=str(tmp_path / "out"),
        VIDEO_PIPELINE_FAST="1",
    )


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "progress_cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start_worker(tmp_path: Path, env: dict[str, str], *args: str,
                 sources: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(tmp_path / f"worker-{time.monotonic_ns()}.log", "w")
    if sources:
        argv = [sys.executable, str(write_worker_launcher(tmp_path, sources)), "worker", *args]
    else:
        argv = [sys.executable, "-m", "progress_cli", "worker", *args]
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-4000:] for p in sorted(tmp_path.glob("worker-*.log")))


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- papers and help ---------------------------------------------------------------------


def test_papers_lists_the_bundled_ids_with_titles(env):
    done = cli("papers", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    papers = list_papers()
    assert [line.split("\t")[0] for line in lines] == [p.pmid for p in papers]
    assert papers[0].title in lines[0]


@pytest.mark.parametrize("command", ["worker", "submit", "run", "papers"])
def test_help_has_examples(env, command):
    done = cli(command, "--help", env=env)
    assert done.returncode == 0
    assert "examples:" in done.stdout and f"progress-service {command}" in done.stdout


@pytest.mark.parametrize("command", ["demo", "submit", "watch", "run", "papers"])
def test_help_examples_name_only_bundled_papers(env, command):
    done = cli(command, "--help", env=env)
    assert done.returncode == 0, done.stderr
    pmids = {p.pmid for p in list_papers()}
    named = set(re.findall(r"\b\d{8}\b", done.stdout))
    assert named <= pmids, f"not in the bundled set: {sorted(named - pmids)}"


@pytest.mark.parametrize("args", [["submit", "31452104", "--bogus"], ["watch", "j", "--bogus"],
                                  ["db", "upgrade", "--bogus"], ["demo", "--bogus"], ["web", "--bogus"]])
def test_an_unknown_option_is_the_commands_own_usage_error(env, args):
    """argparse would hand ``--bogus`` up and print the top-level usage, not the command's."""
    done = cli(*args, env=env)
    assert done.returncode == exit_codes.USAGE, done.stderr
    command = " ".join(a for a in args[:2] if not a[0].isdigit() and a not in ("j", "--bogus"))
    assert done.stderr.startswith(f"usage: progress-service {command} "), done.stderr
    assert done.stderr.strip().endswith(f"progress-service {command}: error: unrecognized arguments: --bogus")


def test_the_run_help_example_of_the_video_pipeline_works(env, store, tmp_path):
    """The example as printed (the video pipeline's fast mode from the environment)."""
    done = cli("run", "--help", env=env)
    text = done.stdout.replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "worker.pipelines.video" in ln]
    argv = shlex.split(line.replace("/tmp/video", str(tmp_path / "video")))
    assert argv[:2] == ["progress-service", "run"] and argv[argv.index("--") + 1] == "python"
    args = argv[2:]
    args[args.index("--") + 1] = sys.executable
    done = cli("run", "--job-id", "example", *args, env=env)
    assert done.returncode == 0, done.stderr
    snap = store.get("example")
    assert snap["status"] == "completed" and snap["paper_id"] == "34265844"
    assert snap["completed_steps"] == ["fetch-paper", "generate-script", "generate-audio",
                                       "generate-videos", "assemble-video"]
    assert Path(snap["result"]["video_path"]).is_file()


# -- run -------------------------------------------------------------------------------------


def test_run_passes_the_exit_code_through_and_the_job_fails_with_the_stderr_tail(env, store):
    source = ("import sys; print('STEP a', flush=True); print('PROGRESS 40', flush=True); "
              "print('disk full', file=sys.stderr); sys.exit(3)")
    done = cli("run", "--job-id", "r1", "--paper-id", "31452104", "--steps", "a,b", "--",
               sys.executable, "-c", source, env=env)
    assert done.returncode == 3, done.stderr
    assert "job r1" in done.stderr and "/api/v1/jobs/r1" in done.stderr
    assert "/status/31452104/" in done.stderr
    snap = store.get("r1")
    assert snap["status"] == "failed" and snap["error"] == "exit code 3: disk full"
    assert snap["paper_id"] == "31452104" and snap["steps"] == ["a", "b"]
    assert snap["progress_percent"] == 40 and snap["pipeline"] == "command"
    assert "failed" in done.stderr.splitlines()[-1]


def test_run_a_command_that_succeeds(env, store):
    source = "import json; print('STEP b'); print(json.dumps({'result': {'rows': 7}}))"
    done = cli("run", "--job-id", "r2", "--steps", "a,b", "--", sys.executable, "-c", source,
               env=env)
    assert done.returncode == 0, done.stderr
    snap = store.get("r2")
    assert snap["status"] == "completed" and snap["result"] == {"rows": 7, "exit_code": 0}
    assert snap["paper_id"] == "r2"  # the paper defaults to the job id
    assert "100.0%" in done.stderr  # the bar, one line per change off a terminal


def test_run_echo_passes_the_output_through(env, store):
    source = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
    done = cli("run", "--echo", "--", sys.executable, "-c", source, env=env)
    assert done.returncode == 0
    assert done.stdout == "to stdout\n" and "to stderr" in done.stderr


def test_run_with_a_pipeline_takes_its_steps(env, store):
    done = cli("run", "--job-id", "r3", "--pipeline", "video", "--quiet", "--", sys.executable,
               "-m", "worker.pipelines.video", "34265844", "--out", env["PROGRESS_OUTPUT_DIR"],
               env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    snap = store.get("r3")
    assert snap["status"] == "completed" and snap["pipeline"] == "video"
    assert snap["completed_steps"] == list(PIPELINES["video"].steps)
    assert Path(snap["result"]["video_path"]).is_file()


def test_run_mirrors_its_own_job_to_postgres(env, store, db_url):
    done = cli("run", "--job-id", "r-pg", "--steps", "a", "--", "true",
               env={**env, "DATABASE_URL": db_url})
    assert done.returncode == 0 and "PostgreSQL" not in done.stderr, done.stderr
    with Mirror(store, db_url) as mirror:
        assert mirror.fetch("r-pg")["status"] == "completed"  # no worker, no mirror ran
    assert "r-pg" not in store.client.zrange(store.keys.mirror_due, 0, -1)
    assert 0 < store.client.ttl(store.keys.job("r-pg")) <= 300  # landed: now it may expire


def test_run_with_postgres_down_leaves_its_job_due_and_kept_in_redis(env, store, db_url):
    source = "import sys; sys.exit(4)"
    done = cli("run", "--job-id", "r-nopg", "--", sys.executable, "-c", source, env=env)
    assert done.returncode == 4  # the command's code, PostgreSQL or not
    assert "r-nopg is not in PostgreSQL yet" in done.stderr and "failed" in done.stderr.splitlines()[-1]
    assert "r-nopg" in store.client.zrange(store.keys.mirror_due, 0, -1)
    assert store.client.ttl(store.keys.job("r-nopg")) == -1  # does not expire unmirrored
    with Mirror(store, db_url) as mirror:  # PostgreSQL is back: the next mirror takes it
        assert mirror.sweep() == 1 and mirror.fetch("r-nopg")["status"] == "failed"


@pytest.mark.parametrize("args, says", [
    ([], "no command given"),
    (["--"], "no command given"),
    (["--job-id", "bad id", "--", "true"], "job_id must match"),
    (["--paper-id", "../x", "--", "true"], "paper_id must match"),
    (["--steps", "a,,b", "--", "true"], "step"),
    (["--steps", "a,a", "--", "true"], "unique"),
    (["--steps", "a", "--pipeline", "video", "--", "true"], "not both"),
    (["--pipeline", "nope", "--", "true"], "unknown pipeline"),
    (["--timeout", "-1", "--", "true"], "seconds"),
])
def test_run_bad_input_is_one_line_and_a_usage_error(env, args, says):
    done = cli("run", *args, env=env)
    assert done.returncode == exit_codes.USAGE, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert says in lines[-1]
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage:"))  # argparse's


def test_run_with_a_job_id_in_use_is_a_usage_error(env, store):
    store.create_job("taken", "p", steps=["a"], pipeline="command")
    done = cli("run", "--job-id", "taken", "--", "true", env=env)
    assert done.returncode == exit_codes.USAGE and "exists already" in one_line(done.stderr)


def test_run_a_command_that_does_not_exist_is_127(env, store):
    done = cli("run", "--job-id", "r4", "--", "/no/such/program", env=env)
    assert done.returncode == 127
    assert store.get("r4")["error"].startswith("cannot start")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_interrupted_cancels_the_job_and_kills_the_tree(env, store, tmp_path, sig):
    pids_file = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-m", "progress_cli", "run", "--job-id", "r5",
                             "--steps", "a,b", "--", sys.executable, "-c", TREE, str(pids_file)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        pids = wait_until(lambda: read_pids(pids_file), timeout=20)
        assert pids
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert store.get("r5")["status"] == "canceled"
    assert not [p for p in pids if process_alive(p)]


# -- submit and worker ---------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["31452104", "--pipeline", "nope"], "unknown pipeline"),
    (["not a paper"], "paper_id must match"),
    (["31452104", "--job-id", "x/y"], "job_id must match"),
])
def test_submit_bad_input_is_one_line_and_a_usage_error(env, store, args, says):
    done = cli("submit", *args, env=env)
    assert done.returncode == exit_codes.USAGE
    assert says in one_line(done.stderr)
    assert store.recent_job_ids() == []


def test_submit_wait_says_when_no_worker_listens_on_the_queue(env, settings, store, rq_conn):
    job_id = f"{settings.key_prefix}-nobody"
    done = cli("submit", "31452104", "--job-id", job_id, "--wait", "--timeout", "3", env=env)
    assert done.returncode == exit_codes.TIMEOUT, done.stderr
    assert (f"progress-service submit: no worker is listening on queue '{settings.queue_name}': "
            f"job {job_id} waits until one starts (progress-service worker)") in done.stderr
    assert store.get(job_id)["status"] == "pending"


def test_submit_wait_says_nothing_of_the_kind_while_a_worker_listens(env, settings, store, rq_conn):
    listening = Worker([settings.queue_name], connection=rq_conn, name=f"{settings.key_prefix}-w")
    listening.register_birth()  # in RQ's registry, but it takes no job: this one stays queued
    try:
        done = cli("submit", "31452104", "--job-id", f"{settings.key_prefix}-somebody", "--wait",
                   "--timeout", "3", env=env)
    finally:
        listening.register_death()
    assert done.returncode == exit_codes.TIMEOUT, done.stderr
    assert "no worker" not in done.stderr


def test_the_waiting_queue_of_a_job_counts_the_workers_that_listen(settings, store, rq_conn):
    job_id = submit_job(settings, "31452104", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-q")
    assert waiting_queue(job_id, rq_conn) == {"name": settings.queue_name, "workers": 0}
    listening = Worker([settings.queue_name], connection=rq_conn, name=f"{settings.key_prefix}-w")
    listening.register_birth()
    try:
        assert waiting_queue(job_id, rq_conn) == {"name": settings.queue_name, "workers": 1}
    finally:
        listening.register_death()
    assert waiting_queue(job_id, rq_conn)["workers"] == 0
    store.create_job(f"{settings.key_prefix}-run", "p", steps=["a"], pipeline="command")
    assert waiting_queue(f"{settings.key_prefix}-run", rq_conn) is None  # not RQ's
    cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
    assert waiting_queue(job_id, rq_conn) is None  # no longer waiting


@pytest.mark.slow
def test_submit_wait_exits_with_how_the_job_ended(env, store, rq_conn, tmp_path):
    worker = start_worker(tmp_path, env, "--no-mirror")
    try:
        failed = cli("submit", "99999999", "--wait", env=env, timeout=60)
        paper = list_papers()[0].pmid
        completed = cli("submit", paper, "--wait", env=env, timeout=120)
    finally:
        assert stop_worker(worker) == 0, logs(tmp_path)
    assert failed.returncode == 1, (failed.stderr, logs(tmp_path))
    bad_id = failed.stdout.split()[0]
    assert "unknown paper id" in store.get(bad_id)["error"]
    assert "failed" in failed.stderr
    assert completed.returncode == 0, (completed.stderr, logs(tmp_path))
    job_id = completed.stdout.split()[0]
    snap = store.get(job_id)
    assert snap["status"] == "completed" and Path(snap["result"]["video_path"]).is_file()
    # RQ records it just after the store
    assert wait_until(lambda: rq_status(rq_conn, job_id) == JobStatus.FINISHED, timeout=10)
    assert "100.0%" in completed.stderr


def test_worker_burst_runs_the_queued_jobs_then_exits(env, settings, store, rq_conn, tmp_path):
    job_id = submit_job(settings, list_papers()[1].pmid, store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-burst")
    worker = start_worker(tmp_path, env, "--burst")  # the mirror on: PostgreSQL down is no matter
    assert worker.wait(120) == 0, logs(tmp_path)
    assert store.get(job_id)["status"] == "completed", logs(tmp_path)
    text = logs(tmp_path)
    assert f"queue '{settings.queue_name}'" in text and "mirror on" in text


def test_worker_without_redis_says_so_and_exits_unavailable(env):
    done = cli("worker", "--burst", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == exit_codes.UNAVAILABLE and "does not answer" in done.stderr


@pytest.mark.slow
def test_cancel_a_job_in_a_forking_worker_kills_its_tree_and_the_worker_goes_on(
        env, settings, store, rq_conn, tmp_path, monkeypatch):
    monkeypatch.setitem(PIPELINES, "t-tree",
                        Pipeline(name="t-tree", steps=("a", "b"), command=lambda p, o, j: []))
    worker = start_worker(tmp_path, env, "--no-mirror", sources={"t-tree": TREE})
    try:
        job_id, pids = start_tree_job(settings, store, rq_conn, env, tmp_path, "fork")
        assert all(process_alive(p) for p in pids), logs(tmp_path)
        snap = cancel_job(settings, job_id, store=store, redis_conn=rq_conn)
        assert snap["status"] == "canceled"
        assert wait_until(lambda: not [p for p in pids if process_alive(p)], timeout=10), logs(tmp_path)
        assert wait_until(lambda: rq_status(rq_conn, job_id) == JobStatus.STOPPED, timeout=10), \
            logs(tmp_path)
        assert store.get(job_id)["status"] == "canceled"
        # The worker is still there and takes the next job.
        second = submit_job(settings, list_papers()[0].pmid, store=store, redis_conn=rq_conn,
                            job_id=f"{settings.key_prefix}-next")
        assert wait_until(lambda: store.get(second)["status"] == "completed", timeout=60), \
            (store.get(second), logs(tmp_path))
    finally:
        assert stop_worker(worker) == 0, logs(tmp_path)



def rq_status(rq_conn, job_id: str) -> JobStatus | None:
    """The job's status as RQ records it."""
    return Job.fetch(job_id, connection=rq_conn).get_status()


def start_tree_job(settings, store, rq_conn, env, tmp_path, name: str) -> tuple[str, list[int]]:
    """Submit a t-tree job (TREE) to the test's worker; once its command has written its pids
    and RQ records it started, its id and those pids."""
    job_id = submit_job(settings, "p1", "t-tree", store=store, redis_conn=rq_conn,
                        job_id=f"{settings.key_prefix}-{name}")
    pids = wait_until(lambda: read_pids(Path(env["PROGRESS_OUTPUT_DIR"]) / job_id / "pids"),
                      timeout=30)
    assert pids, logs(tmp_path)
    assert wait_until(lambda: rq_status(rq_conn, job_id) == JobStatus.STARTED, timeout=10)
    return job_id, pids


# -- the terminal bar ----------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def play(store, job_id, updates, delay=0.05):
    def run():
        time.sleep(delay)
        for update in updates:
            store.update(job_id, **update)
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


UPDATES = [
    {"status": "running", "current_step": "a"},
    {"progress_percent": 25},
    {"progress_percent": 50, "current_step": "b"},
    {"progress_percent": 75},
    {"status": "completed"},
]


def test_follow_job_prints_one_line_per_change_off_a_terminal(store):
    store.create_job("f1", "p", steps=["a", "b"], pipeline="command")
    out = io.StringIO()
    player = play(store, "f1", UPDATES)
    final = follow_job(store, "f1", out=out, timeout=10)
    player.join(5)
    assert final["status"] == "completed" and exit_code_for(final["status"]) == 0
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].endswith("pending")
    assert "[#####...............]  25.0%  a (1/2)" in lines
    assert any(line.startswith("[##########..........]  50.0%  b (2/2)") for line in lines)
    assert lines[-1] == "[####################] 100.0%  completed"
    assert len(lines) == len(set(lines))


def test_follow_job_redraws_one_line_on_a_terminal(store):
    store.create_job("f2", "p", steps=["a", "b"], pipeline="command")
    out = FakeTerminal()
    player = play(store, "f2", [*UPDATES[:3], {"status": "failed", "error": "exit code 1: boom\nmore"}])
    final = follow_job(store, "f2", out=out, timeout=10)
    player.join(5)
    assert exit_code_for(final["status"]) == 1
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, redrawn
    assert text.count("\r") >= 3
    assert text.rstrip().endswith("failed: exit code 1: boom\x1b[K")


def test_follow_job_shows_the_stores_eta_and_a_stall_makes_it_grow(store):
    """The bar's ETA is the store's ``eta_seconds``, read again while the job is quiet:
    a stalled job's ETA grows on screen instead of freezing at its last value."""
    store.create_job("f4", "p", steps=["a"], pipeline="command")
    store.update("f4", status="running", progress_percent=0)
    store.update("f4", progress_percent=50)  # from now on the ETA is the time since running
    out = io.StringIO()
    result: list[dict] = []
    follower = threading.Thread(target=lambda: result.append(
        follow_job(store, "f4", out=out, timeout=20, idle_check=0.2)), daemon=True)
    follower.start()

    def etas() -> list[int]:
        return [int(m) for m in re.findall(r"ETA (\d+)s", out.getvalue())]

    try:
        assert wait_until(lambda: len(set(etas())) >= 3, timeout=10), out.getvalue()
    finally:
        store.update("f4", status="completed")
        follower.join(10)
    assert result and result[0]["status"] == "completed"
    assert etas() == sorted(etas()) and etas()[-1] >= 2, out.getvalue()  # it grew, step by step
    assert store.get("f4")["seq"] == 4  # no write made it move: only time passed


def test_follow_job_times_out_and_knows_no_unknown_job(store):
    store.create_job("f3", "p", steps=["a"], pipeline="command")
    with pytest.raises(TimeoutError):
        follow_job(store, "f3", out=io.StringIO(), timeout=0.5)
    with pytest.raises(JobNotFound):
        follow_job(store, "nope", out=io.StringIO(), timeout=1)


def test_exit_codes_and_lines():
    assert [exit_code_for(s) for s in ("completed", "failed", "canceled", "running")] == [0, 1, 2, 1]
    snap = {"status": "running", "progress_percent": 45, "current_step": "generate-audio",
            "steps": ["fetch-paper", "generate-script", "generate-audio", "x", "y"],
            "eta_seconds": 12.3, "is_stale": False}
    assert render_line(snap) == "[#########...........]  45.0%  generate-audio (3/5)  ETA 12s"
    assert render_line({**snap, "eta_seconds": None, "is_stale": True}).endswith("(stale)")
    assert render_line({**snap, "status": "canceled"}).endswith("canceled")


@pytest.mark.slow
def test_rq_stop_command_alone_cancels_the_job_and_kills_its_tree(env, settings, store, rq_conn,
                                                                   tmp_path, monkeypatch):
    """Someone stops the job in RQ (the dashboard, a script), not through cancel_job."""
    from rq.command import send_stop_job_command

    monkeypatch.setitem(PIPELINES, "t-tree",
                        Pipeline(name="t-tree", steps=("a", "b"), command=lambda p, o, j: []))
    worker = start_worker(tmp_path, env, "--no-mirror", sources={"t-tree": TREE})
    try:
        job_id, pids = start_tree_job(settings, store, rq_conn, env, tmp_path, "stop")
        send_stop_job_command(rq_conn, job_id)
        assert wait_until(lambda: store.get(job_id)["status"] == "canceled", timeout=10), logs(tmp_path)
        assert wait_until(lambda: not [p for p in pids if process_alive(p)], timeout=10), logs(tmp_path)
        assert wait_until(lambda: rq_status(rq_conn, job_id) == JobStatus.STOPPED, timeout=10), \
            logs(tmp_path)
        assert worker.poll() is None, logs(tmp_path)
    finally:
        assert stop_worker(worker) == 0, logs(tmp_path)
