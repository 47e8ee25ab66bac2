"""The data commands as a user runs them: ``progress-service db|mirror|watch|submit``.

Each command runs as a subprocess against the real Redis (a key prefix and queue
of the test's own) and the real PostgreSQL (a schema of the test's own).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CLOSED_DATABASE_URL, cli_env, wait_until

from progress_cli import exit_codes
from progress_service import ProgressStore, migrations
from progress_service.models import DEFAULT_STEPS

ROOT = Path(__file__).resolve().parent.parent
STEPS = list(DEFAULT_STEPS)


@pytest.fixture
def env(settings, empty_db_url, tmp_path):
    """The environment of a CLI subprocess: this test's Redis prefix, queue and schema."""
    return cli_env(settings, DATABASE_URL=empty_db_url, PROGRESS_OUTPUT_DIR=str(tmp_path / "videos"))


@pytest.fixture
def real_store(real_redis, settings):
    return ProgressStore(real_redis, settings)


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "progress_cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "progress_cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finish(store, job_id, status="completed"):
    store.create_job(job_id, "31452104", steps=STEPS)
    store.update(job_id, status="running", current_step="fetch-paper", progress_percent=10)
    if status == "completed":
        store.update(job_id, progress_percent=100, result={"video_path": f"/videos/{job_id}.mp4"})
    else:
        store.update(job_id, status=status, error="boom" if status == "failed" else None)


# -- db upgrade -------------------------------------------------------------------


def test_db_upgrade_twice_applies_then_says_up_to_date(env):
    first = cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {m}" for m in migrations.available()]
    second = cli("db", "upgrade", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"already up to date (version {migrations.latest_version()})"
    status = cli("db", "status", env=env)
    assert status.returncode == 0 and "pending" not in status.stdout


def test_db_upgrade_without_postgres_is_a_clear_error(env):
    done = cli("db", "upgrade", env={**env, "DATABASE_URL": CLOSED_DATABASE_URL})
    assert done.returncode == exit_codes.UNAVAILABLE
    assert "progress-service db: postgres:" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_status_with_a_pending_migration_is_a_config_error_not_a_job_outcome(env):
    done = cli("db", "status", env=env)  # a fresh schema: every migration pending
    assert done.returncode == exit_codes.CONFIG == 78, done.stderr
    assert "pending" in done.stdout


def test_db_help_has_examples(env):
    done = cli("db", "upgrade", "--help", env=env)
    assert done.returncode == 0 and "examples:" in done.stdout and "already up to date" in done.stdout


# -- mirror -------------------------------------------------------------------------


def test_mirror_copies_queued_and_lost_jobs_and_says_how_many(env, db_url, real_store):
    for i in range(3):
        finish(real_store, f"queued-{i}")
    finish(real_store, "lost", "failed")
    real_store.client.zrem(real_store.keys.mirror_due, "lost")  # its due entry was lost
    done = cli("mirror", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 rows landed in PostgreSQL (3 queued, 1 found by the scan)")
    again = cli("mirror", env=env)
    assert again.stdout.startswith("0 rows landed"), again.stdout


def test_mirror_without_the_schema_says_run_db_upgrade(env, real_store):
    finish(real_store, "job-1")
    done = cli("mirror", env=env)
    assert done.returncode == exit_codes.CONFIG
    assert "run progress-service db upgrade" in done.stderr
    assert "job-1" in {k.decode() for k in real_store.client.zrange(real_store.keys.mirror_due, 0, -1)}


# -- watch ----------------------------------------------------------------------------


def subscribers(store, job_id) -> int:
    return int(store.client.pubsub_numsub(store.keys.events(job_id))[0][1])


@pytest.mark.parametrize(("status", "code"), [("completed", 0), ("failed", 1), ("canceled", 2)])
def test_watch_exits_with_the_jobs_outcome(env, real_store, status, code):
    pytest.importorskip("progress_cli.terminal", reason="progress_cli/terminal.py is not in this tree yet")
    store = real_store
    store.create_job("job-1", "31452104", steps=STEPS)
    watch = start_cli("watch", "job-1", "--timeout", "30", env=env)
    try:
        # Drive the job once the watcher listens (a poll with a deadline, not a sleep).
        wait_until(lambda: subscribers(store, "job-1") > 0 or watch.poll() is not None)
        store.update("job-1", status="running", current_step="fetch-paper", progress_percent=12)
        store.update("job-1", current_step="generate-audio", progress_percent=47)
        if status == "completed":
            store.update("job-1", progress_percent=100, result={"video_path": "/videos/x.mp4"})
        elif status == "failed":
            store.update("job-1", status="failed", error="ffmpeg exited with 1")
        else:
            store.update("job-1", status="canceled")
        out, err = watch.communicate(timeout=30)
    finally:
        stop(watch)
    assert watch.returncode == code, err
    assert out.startswith(f"job-1 {status}")
    if status == "failed":
        assert "ffmpeg exited with 1" in out


def test_watch_an_unknown_job_exits_not_found_not_failed(env, db_url):
    done = cli("watch", "no-such-job", env=env, timeout=30)
    assert done.returncode == exit_codes.NOT_FOUND == 66  # not 1: that would say "it failed"
    assert "job no-such-job not found" in done.stderr


@pytest.mark.parametrize(("args", "code", "says"), [
    (["watch", "bad id"], exit_codes.USAGE, "job_id must match"),
    (["watch"], exit_codes.USAGE, "the following arguments are required: JOB_ID"),
    (["watch", "j", "--timeout", "soon"], exit_codes.USAGE, "--timeout"),
])
def test_watch_bad_input_is_a_usage_error_never_canceled(env, args, code, says):
    done = cli(*args, env=env)
    assert done.returncode == code == 64, done.stderr  # argparse's own 2 would read "canceled"
    assert says in done.stderr and "Traceback" not in done.stderr


def test_watch_without_redis_says_so_in_one_line(env):
    done = cli("watch", "job-1", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=30)
    assert done.returncode == exit_codes.UNAVAILABLE == 69, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert done.stderr.startswith("progress-service watch: redis:")


MALFORMED_URLS = [
    ("REDIS_URL", "localhost:6379"),  # no scheme
    ("REDIS_URL", "redis://:s3cret@127.0.0.1:port/0"),
    ("PROGRESS_REDIS_URL", "http://127.0.0.1:6379/0"),
    ("DATABASE_URL", "postgres"),  # neither a URL nor key=value
    ("DATABASE_URL", "postgresql://app:s3cret@127.0.0.1:port/db"),
    ("DATABASE_URL", "postgresql://[::1/db"),
]


@pytest.mark.parametrize("command", [["watch", "job-1"], ["mirror"], ["db", "upgrade"],
                                     ["submit", "31452104"], ["worker", "--burst"],
                                     ["run", "--", "true"], ["demo"], ["web"]])
@pytest.mark.parametrize(("name", "url"), MALFORMED_URLS)
def test_a_malformed_url_is_one_line_and_a_config_error(env, command, name, url):
    done = cli(*command, env={**env, name: url}, timeout=30)
    assert done.returncode == exit_codes.CONFIG == 78, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith(f"progress-service {command[0]}: {name}=")
    assert "s3cret" not in done.stderr


def test_settings_name_the_malformed_url():
    from progress_service.config import ConfigError, Settings

    for name, url in MALFORMED_URLS:
        with pytest.raises(ConfigError, match=f"^{name}="):
            Settings.from_env({name: url})
    for url in ("host=127.0.0.1 port=5432 dbname=app", "postgresql://a:b@h1:5432,h2:5433/db"):
        assert Settings.from_env({"DATABASE_URL": url}).database_url == url
    for url in ("unix:///run/redis.sock", "rediss://:pw@[::1]:6380/2"):
        assert Settings.from_env({"REDIS_URL": url}).progress_redis_url == url


def test_help_lists_the_exit_codes(env):
    done = cli("--help", env=env)
    assert done.returncode == 0
    for code in ("0 ", "1 ", "2 ", "64 ", "66 ", "69 ", "78 ", "124 ", "130 "):
        assert f"  {code}" in done.stdout, code


@pytest.mark.parametrize("command", [[], ["demo"], ["web"], ["watch"], ["submit"], ["run"],
                                     ["worker"], ["mirror"], ["db"], ["db", "upgrade"]])
def test_help_gives_a_bad_command_line_64_never_a_job_outcome(env, command):
    done = cli(*command, "--help", env=env)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    said = re.findall(r"\b(\d+)\b[^\d]{0,40}?a bad (?:command line|argument)", text)
    assert set(said) <= {"64"}, said
    bad = cli(*command, "--no-such-option", env=env)
    assert bad.returncode == exit_codes.USAGE == 64, bad.stderr
    if command:  # the top-level help lists them all; each command's names what it can exit with
        assert re.search(r"\b78\b", text), text


def test_watch_a_job_redis_expired_reads_postgres(env, db_url, real_store):
    pytest.importorskip("progress_cli.terminal", reason="progress_cli/terminal.py is not in this tree yet")
    finish(real_store, "old-job", "canceled")
    assert cli("mirror", env=env).returncode == 0
    real_store.client.delete(real_store.keys.job("old-job"), real_store.keys.history("old-job"))
    done = cli("watch", "old-job", env=env, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith("old-job canceled")
    assert "from PostgreSQL" in done.stderr


def test_watch_help_documents_the_exit_codes(env):
    done = cli("watch", "--help", env=env)
    assert done.returncode == 0
    for line in ("0    the job completed", "1    the job failed", "2    the job was canceled"):
        assert line in done.stdout


# -- submit --wait ---------------------------------------------------------------------


@pytest.mark.slow
def test_submit_wait_with_a_worker_running(env, db_url, real_store):
    pytest.importorskip("progress_cli.worker_commands",
                        reason="progress_cli/worker_commands.py is not in this tree yet")
    from worker.pipelines.papers import list_papers

    paper = list_papers()[0].pmid
    worker = start_cli("worker", env=env)
    try:
        done = cli("submit", paper, "--wait", env=env, timeout=120)
    finally:
        stop(worker)
    assert done.returncode == 0, (done.stdout, done.stderr, worker.stderr.read()[-3000:])
    job_id = done.stdout.split()[0]
    snap = real_store.get(job_id)
    assert snap["status"] == "completed" and snap["paper_id"] == paper
    assert Path(snap["result"]["video_path"]).is_file()
