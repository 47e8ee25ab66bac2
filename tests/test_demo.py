"""``progress-service demo`` end to end, as a user runs it, with no servers configured.

REDIS_URL, DATABASE_URL and every PROGRESS_* are unset, so the demo starts
embedded Redis and PostgreSQL servers of its own, the web server and a worker;
the tests check the job's bar, page and video, and that every process and port
it started is gone once it exits (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from test_video_pipeline import mean_volume

from worker.process_tree import descendants, process_alive

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_the_whole_stack():
    for module in ("worker.jobs", "progress_cli.terminal", "progress_cli.worker_commands",
                   "progress_cli.web_commands"):
        pytest.importorskip(module, reason=f"{module} is not in this tree yet")


@pytest.fixture
def tmp_path():
    """A temporary folder others may traverse: as root, the embedded PostgreSQL runs as
    another user and must reach its folder inside (pytest's own tmp_path is private)."""
    folder = Path(tempfile.mkdtemp(prefix="progress-demo-test-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def demo_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROGRESS_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env["TMPDIR"] = str(tmp_path)  # the demo's temporary folder goes here: we check it is gone
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_demo(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "progress_cli", "demo", *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def own_processes(tmp_path: Path) -> list[str]:
    """Live processes whose command line or environment names the test's temporary folder."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(tmp_path).encode() in text:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_left(output: str, tmp_path: Path) -> None:
    pids = {int(p) for p in re.findall(r"\bpid (\d+)", output)}
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)}
    assert len(pids) >= 4, output  # redis, postgres, web, worker
    assert len(ports) >= 3, output
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    assert [p for p in ports if port_open(p)] == []
    assert own_processes(tmp_path) == []
    assert list(tmp_path.glob("progress-demo-*")) == []


def test_demo_runs_one_job_with_a_moving_bar_and_leaves_nothing_behind(demo_env, tmp_path):
    started = time.monotonic()
    demo = start_demo(demo_env)
    try:
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    output = out + err
    assert demo.returncode == 0, output[-4000:]
    assert time.monotonic() - started < 60

    assert "REDIS_URL is unset: started an embedded Redis" in out
    assert "DATABASE_URL is unset: started an embedded PostgreSQL" in out
    url = re.search(r"status page: (http://127\.0\.0\.1:\d+/status/[\w.-]+/)", out)
    assert url, out
    assert out.index("status page:") < out.index("submitted job")  # the URL comes first
    percents = {float(p) for p in re.findall(r"(\d+(?:\.\d+)?)\s?%", err)}
    assert len(percents) >= 4, err[-3000:]  # the bar moved
    video = re.search(r"video: (\S+\.mp4) \(exists\)", out)
    assert video, out
    assert Path(video[1]).is_file() and Path(video[1]).stat().st_size > 0
    # narrated: by espeak-ng where it is installed, else by the espeakng-loader wheel (this
    # machine has no espeak-ng; tests/test_video_pipeline.py hides it on any machine)
    assert mean_volume(Path(video[1])) > -60.0
    assert re.search(r"PostgreSQL: progress_jobs holds job \S+ \(status completed", out), out
    assert_nothing_left(output, tmp_path)


def read_until(demo, prefix: str, timeout: float = 60) -> str:
    """The demo's stdout up to and including the first line that starts with ``prefix``
    (or all of it, if it ends first or ``timeout`` passes)."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            break
    return "".join(lines)


def test_demo_serve_keeps_the_page_up_until_ctrl_c(demo_env, tmp_path):
    demo = start_demo(demo_env, "--serve")
    try:
        output = read_until(demo, "demo: serving ")
        assert "demo: serving " in output, output
        url = re.search(r"serving (http://\S+)", output)[1]
        with urllib.request.urlopen(f"{url}?_json=1", timeout=5) as response:
            assert response.status == 200
            assert b'"status":"completed"' in response.read().replace(b" ", b"")
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    output += out + err
    assert demo.returncode == 0, output[-4000:]
    assert "stopped web" in output and "stopped worker" in output
    assert_nothing_left(output, tmp_path)


def test_ctrl_c_in_the_middle_stops_everything(demo_env, tmp_path):
    demo = start_demo(demo_env)
    output = ""
    try:
        output = read_until(demo, "demo: submitted job")
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    output += out + err
    assert "demo: submitted job" in output, output
    assert demo.returncode in (0, 130), output[-4000:]  # 0 only if the job won the race
    assert_nothing_left(output, tmp_path)


def read_terminal_until(master: int, text: str, timeout: float = 90) -> str:
    """What the demo wrote to its terminal (the pty's master side) until ``text`` shows."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the demo closed its side
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_closing_the_terminal_under_serve_stops_everything(demo_env, tmp_path):
    """The terminal of `demo --serve` closes: the kernel sends SIGHUP, and every write to the
    terminal fails from then on. The demo stops what it started and deletes its folder."""
    master, slave = pty.openpty()

    def take_the_terminal():  # in the child, after setsid: the pty becomes its controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    demo = subprocess.Popen([sys.executable, "-m", "progress_cli", "demo", "--serve"], env=demo_env,
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=take_the_terminal)
    os.close(slave)
    started: list[psutil.Process] = []
    try:
        output = read_terminal_until(master, "demo: serving ")
        assert "demo: serving " in output, output[-4000:]
        folder = [p for p in tmp_path.glob("progress-demo-*") if p.is_dir()]
        assert len(folder) == 1, folder
        for pid in descendants(demo.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                started.append(psutil.Process(pid))  # the pid and its start time: never a reused pid
        assert len(started) >= 4, output  # redis, postgres, web, worker (and their children)
        os.close(master)  # the terminal window closes
        master = None
        demo.wait(timeout=60)
        left = [process.pid for process in started if process_alive(process)]
    finally:
        if master is not None:
            os.close(master)
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        for process in started:  # a failed run leaves nothing running either
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    assert left == []
    assert own_processes(tmp_path) == []
    assert list(tmp_path.glob("progress-demo-*")) == []
