"""worker.process_tree: real process trees killed whole, and nothing else.

Each tree is a small Python program run as a subprocess in a session of its own,
the way the runner starts a job's command; it prints the pids of what it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import psutil
import pytest
from helpers import wait_until

from worker.process_tree import (
    descendants,
    group_members,
    kill_process_tree,
    process_alive,
    tagged_processes,
)

# A child (this program) with a grandchild in its group, and a daemon the classic way:
# fork, setsid, fork again, the middle process exits, so the daemon has no parent
# link back and a session of its own. Prints "grandchild daemon", then waits.
TREE = """
    import os, subprocess, time
    grandchild = subprocess.Popen(["sleep", "120"])
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execvp("sleep", ["sleep", "120"])
        os._exit(0)
    os.waitpid(middle, 0)
    print(grandchild.pid, os.read(r, 32).decode(), flush=True)
    time.sleep(120)
"""

# A shell that leaves an orphan in its process group, then waits: "orphan".
ORPHAN = """sh -c 'sleep 120 & echo $!' && exec sleep 120"""

# A child (printed) that dies of SIGTERM, under a parent that ignores it and reaps it.
STUBBORN = """
    import signal, subprocess, time
    child = subprocess.Popen(["sleep", "120"])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(child.pid, flush=True)
    child.wait()
    time.sleep(120)
"""


@pytest.fixture
def start():
    """Start a process in a session of its own; every process it printed is killed at the end."""
    started: list[tuple[subprocess.Popen, list[int]]] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[int]]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, **(env or {})})
        started.append((proc, pids := []))
        pids.extend(int(pid) for pid in proc.stdout.readline().split())
        return proc, pids

    yield start
    for proc, pids in started:
        for pid in [proc.pid, *pids]:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def python(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def test_a_tree_with_a_double_forked_daemon_is_killed_whole_and_reaped(start):
    tag = f"PROGRESS_JOB_ID=tree-{uuid.uuid4().hex}"
    root, (grandchild, daemon) = start(python(TREE), env=dict([tag.split("=")]))
    tree = [root.pid, grandchild, daemon]
    assert all(process_alive(p) for p in tree)
    assert descendants(root.pid) == {grandchild}  # the daemon kept no link back ...
    assert tagged_processes(tag) == set(tree)  # ... but it kept the job's entry

    assert kill_process_tree(root.pid, grace=5.0, popen=root, tag=tag) == []
    assert not [p for p in tree if process_alive(p)]
    assert not tagged_processes(tag)
    assert root.returncode == -signal.SIGTERM  # reaped by its Popen, with its exit code


def test_an_orphan_left_in_the_group_is_killed_with_it(start):
    root, (orphan,) = start(["sh", "-c", ORPHAN])
    assert wait_until(lambda: orphan not in descendants(root.pid), timeout=10)  # its shell exited
    assert set(group_members(root.pid)) == {root.pid, orphan}

    assert kill_process_tree(root.pid, grace=5.0, popen=root) == []
    assert not process_alive(orphan) and not group_members(root.pid)


def test_what_ignores_sigterm_gets_sigkill_after_the_grace(start):
    root, (child,) = start(python(STUBBORN))
    assert kill_process_tree(root.pid, grace=0.5, popen=root) == []
    assert not process_alive(child)
    assert root.returncode == -signal.SIGKILL


def _take_pid(pid: int) -> subprocess.Popen | None:
    """A new process that gets ``pid`` (free now): the kernel's next pid is set to it."""
    for _ in range(200):  # other processes may fork in between: try again
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            pytest.skip("cannot choose the next pid here (needs root on Linux)")
        proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
        if psutil.pid_exists(pid):
            return None
    return None


def test_a_recycled_pid_is_not_killed_with_the_tree(start):
    """A member of the tree dies during the grace and a stranger gets its pid: the
    stranger, started later, is not the process the kill collected, and lives on."""
    root, (child,) = start(python(STUBBORN))
    collected = psutil.Process(child)
    result: dict[str, list[int]] = {}
    thread = threading.Thread(
        target=lambda: result.update(left=kill_process_tree(root.pid, grace=3.0, popen=root)))
    thread.start()
    stranger = None
    try:
        assert wait_until(lambda: not psutil.pid_exists(child), timeout=10)  # dead and reaped
        stranger = _take_pid(child)
        if stranger is None:
            pytest.skip(f"pid {child} was taken by another process first")
        assert process_alive(child) and not process_alive(collected)
        thread.join(30)
        assert result["left"] == [] and root.returncode == -signal.SIGKILL
        assert process_alive(stranger.pid), "a process that reused a killed member's pid was killed"
    finally:
        thread.join(30)
        if stranger is not None:
            stranger.kill()
            stranger.wait(10)
