"""worker.runner: real commands as tracked jobs, on the real Redis.

Each command is a small Python program run as a subprocess; the store is the
test's own (a key prefix of its own), read back the way a user would.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import textwrap
import threading
import time

import pytest
import redis
from helpers import read_pids, tree_script, wait_until
from tcp_proxy import TcpProxy

from progress_service import JobNotFound, ProgressStore
from progress_service.models import ms_from_iso
from progress_service.store import connect
from worker.process_tree import process_alive
from worker.runner import run_command

PY = sys.executable


@pytest.fixture
def store(connected_store):
    """The real Redis through a client like production's (decoded replies)."""
    return connected_store


def program(source: str, *args: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(source), *args]


def run_in_thread(store, argv: list[str], **options) -> tuple[threading.Thread, dict]:
    """``run_command(store, "j", argv, **options)`` in a started thread; its outcome lands in
    the dict, as ``"outcome"``, once it returns."""
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(outcome=run_command(store, "j", argv, **options)))
    thread.start()
    return thread, result


def non_decreasing(values) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


# A command that starts two grandchildren: one in its process group, one that leaves
# it (setsid), writes "own pid, grandchild, escaped grandchild" to argv[1], then waits.
TREE = tree_script("STEP a", "PROGRESS 10 started", escape=True)


def test_a_command_completes_with_its_result_and_every_step_in_order(store, settings):
    store.create_job("j", "p", steps=["fetch", "render", "encode"], pipeline="command")
    source = """
        import json, sys, time
        print("STEP 1/3 fetch", flush=True)
        print("PROGRESS 20 fetched", flush=True)
        print("STEP render", flush=True)
        for i in range(5):  # a tqdm bar, redrawn with \\r on stderr
            sys.stderr.write(f"\\rrender: {i * 25:3d}%|{'#' * i:5s}| {i}/4 [00:00<00:00]")
            sys.stderr.flush()
            time.sleep(0.06)
        sys.stderr.write("\\n")
        print(json.dumps({"step": "encode", "message": "encoding"}), flush=True)
        print(json.dumps({"result": {"video_url": "file:///tmp/x.mp4"}}), flush=True)
    """
    outcome = run_command(store, "j", program(source), steps=["fetch", "render", "encode"],
                          settings=settings)
    assert outcome.status == "completed" and outcome.exit_code == 0, outcome
    assert outcome.result == {"video_url": "file:///tmp/x.mp4", "exit_code": 0}
    snap = store.get("j")
    assert snap["status"] == "completed" and snap["progress_percent"] == 100
    assert snap["result"] == outcome.result
    assert snap["completed_steps"] == ["fetch", "render", "encode"]
    assert snap["started_at"] and snap["finished_at"] and snap["heartbeat_at"]
    history = store.history("j")
    assert [h["status"] for h in history][:2] == ["pending", "running"]
    steps_seen = [h["current_step"] for h in history if h["current_step"]]
    assert list(dict.fromkeys(steps_seen)) == ["fetch", "render", "encode"]
    assert non_decreasing([h["progress_percent"] for h in history])
    # the bar moved within "render" (a third of the job from 33.3% on)
    assert any(33.4 < h["progress_percent"] < 66.6 for h in history)


def test_a_failing_command_fails_with_its_exit_code_and_the_tail_of_stderr(store, settings):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = """
        import sys
        print("STEP a", flush=True)
        for i in range(5):
            sys.stderr.write(f"\\r{i * 20}%|##  | {i}/5 [00:00<00:00]")
        sys.stderr.write("\\n")
        for i in range(40):
            print(f"log line {i}", file=sys.stderr)
        print("Error: the disk is full", file=sys.stderr)
        sys.exit(4)
    """
    outcome = run_command(store, "j", program(source), steps=["a"], settings=settings)
    assert outcome.status == "failed" and outcome.exit_code == 4
    assert outcome.shell_exit_code == 4
    snap = store.get("j")
    assert snap["status"] == "failed" and snap["finished_at"]
    error = snap["error"]
    assert error.startswith("exit code 4: ")
    assert error.rstrip().endswith("Error: the disk is full")
    assert "log line 39" in error and "log line 5\n" not in error  # a bounded tail
    assert "%|" not in error  # progress bars are not the news


def test_a_command_killed_by_a_signal_says_so(store, settings):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    outcome = run_command(store, "j", program("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                          steps=["a"], settings=settings)
    assert outcome.status == "failed" and outcome.exit_code == -signal.SIGKILL
    assert outcome.shell_exit_code == 128 + signal.SIGKILL
    assert store.get("j")["error"].startswith("killed by SIGKILL")


def test_stdout_and_stderr_are_read_at_the_same_time(store, settings):
    """4 MB on stderr before a word on stdout: a runner reading stdout first would deadlock."""
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    source = """
        import sys
        for i in range(4096):
            sys.stderr.write("e" * 1023 + "\\n")
        sys.stderr.flush()
        print("STEP b", flush=True)
        sys.stdout.write("PROGRESS 77 no newline at the end")
        sys.stdout.flush()
        sys.exit(1)
    """
    started = time.monotonic()
    outcome = run_command(store, "j", program(source), steps=["a", "b"], settings=settings)
    assert time.monotonic() - started < 20
    assert outcome.status == "failed" and outcome.exit_code == 1
    snap = store.get("j")
    assert snap["current_step"] == "b"
    assert snap["progress_percent"] == 77  # the partial last line was read too
    assert snap["message"] == "no newline at the end"


def test_invalid_utf8_and_megabyte_lines_survive(store, settings):
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    source = """
        import json, sys
        out = sys.stdout.buffer
        out.write(b"\\xff\\xfe\\xc3 not utf-8 \\x00\\n")
        out.write(b"STEP a\\n")
        out.write(b"x" * (1 << 20) + b"\\n")            # one MiB on one line
        out.write(b"{" + b"9" * (3 << 20) + b"\\n")     # three MiB, truncated by the splitter
        out.write(b"PROGRESS 60 \\xe2\\x82\\xac half\\n")  # a valid multi-byte character
        out.write(b"STEP b\\n")
        out.write(json.dumps({"result": {"ok": True}}).encode() + b"\\n")
        out.flush()
        sys.stderr.buffer.write(b"\\x80" * (2 << 20))   # two MiB of garbage, no newline
    """
    outcome = run_command(store, "j", program(source), steps=["a", "b"], settings=settings)
    assert outcome.status == "completed", outcome
    assert outcome.result == {"ok": True, "exit_code": 0}
    history = store.history("j")
    assert [h["current_step"] for h in history if h["current_step"]][-1] == "b"
    assert any(h["progress_percent"] == 60 for h in history)
    assert any(h.get("current_step") == "a" for h in history)


def test_garbage_and_silence_crash_nothing_and_let_the_job_go_stale(store, settings, tmp_path):
    """stale_after is 2 s here: a silent command makes the job read stale, heartbeats go on.

    The command stays silent until the test has seen both, then goes on: no
    race between the job finishing and the next heartbeat.
    """
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    go_on = tmp_path / "go-on"
    source = """
        import os, sys, time
        for line in ("PROGRESS banana", "PROGRESS 150", "STEP 9/2 nine", "STEP nosuch",
                     '{"progress": "x"}', '{"step": 5}', "{not json", "%|||", "\\x1b[2K\\x1b[1A"):
            print(line, flush=True)
            print(line, file=sys.stderr, flush=True)
        print("STEP a", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("STEP b", flush=True)
    """
    thread, result = run_in_thread(store, program(source, str(go_on)),
                                   steps=["a", "b"], settings=settings)
    try:
        stale = wait_until(lambda: (s := store.get("j"))["is_stale"] and s,
                           timeout=settings.stale_after + 5)
        assert stale and stale["status"] == "running" and stale["current_step"] == "a"
        assert stale["heartbeat_at"] is not None  # the worker is alive; only progress stopped
        first_beat = stale["heartbeat_at"]
        assert wait_until(lambda: store.get("j")["heartbeat_at"] != first_beat,
                          timeout=settings.heartbeat_interval * 3)
        assert store.get("j")["is_stale"] is True  # heartbeats alone do not count as progress
    finally:
        go_on.touch()
        thread.join(30)
    assert result["outcome"].status == "completed"
    snap = store.get("j")
    assert snap["status"] == "completed" and snap["is_stale"] is False


def test_percent_only_changes_are_throttled_and_nothing_is_dropped(store, settings):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = """
        for i in range(1, 295):
            print(f"PROGRESS {i / 3:.2f}", flush=True)
        print("PROGRESS 99.5 last")
        import sys; sys.exit(2)
    """
    outcome = run_command(store, "j", program(source), steps=["a"], settings=settings)
    assert outcome.status == "failed"
    snap = store.get("j")
    assert snap["progress_percent"] == 99.5 and snap["message"] == "last"  # the last value kept
    assert snap["seq"] < 60  # 295 lines, far fewer writes (min_interval 0.05 s)


def test_cancel_in_the_store_kills_the_whole_process_tree(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    pids_file = tmp_path / "pids"
    thread, result = run_in_thread(store, program(TREE, str(pids_file)),
                                   steps=["a"], settings=settings, kill_grace=2.0)
    try:
        pids = wait_until(lambda: read_pids(pids_file), timeout=15)
        assert pids and all(process_alive(p) for p in pids)
        assert wait_until(lambda: store.get("j")["progress_percent"] == 10, timeout=5)
        canceled_at = time.monotonic()
        assert store.update("j", status="canceled").accepted  # a cancel from anywhere
    finally:
        thread.join(30)
    outcome = result["outcome"]
    assert time.monotonic() - canceled_at < 3  # via pub/sub, not the next heartbeat
    assert outcome.status == "canceled" and outcome.survivors == []
    assert not [p for p in pids if process_alive(p)], "a process of the tree was left running"
    snap = store.get("j")
    assert snap["status"] == "canceled" and snap["progress_percent"] == 10


def test_a_command_that_ignores_sigterm_gets_sigkill_after_the_grace(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("STEP a", flush=True)
        open(sys.argv[1], "w").write("ready")
        time.sleep(120)
    """
    ready = tmp_path / "ready"
    thread, result = run_in_thread(store, program(source, str(ready)),
                                   steps=["a"], settings=settings, kill_grace=0.5)
    try:
        assert wait_until(ready.exists, timeout=15)
        store.update("j", status="canceled")
    finally:
        thread.join(30)
    outcome = result["outcome"]
    assert outcome.status == "canceled" and outcome.exit_code == -signal.SIGKILL
    assert not process_alive(outcome.pid)


def test_a_timeout_fails_the_job_and_kills_the_tree(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    pids_file = tmp_path / "pids"
    outcome = run_command(store, "j", program(TREE, str(pids_file)), steps=["a"], settings=settings,
                          timeout=1.5, kill_grace=2.0)
    assert outcome.status == "failed" and outcome.error == "timed out after 1.5 s"
    assert store.get("j")["error"] == "timed out after 1.5 s"
    pids = read_pids(pids_file)
    assert pids and not [p for p in pids if process_alive(p)]


def test_a_command_that_closes_its_pipes_is_still_watched(store, settings):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = """
        import os, time
        print("STEP a", flush=True)
        os.close(1); os.close(2)
        time.sleep(120)
    """
    started = time.monotonic()
    outcome = run_command(store, "j", program(source), steps=["a"], settings=settings,
                          timeout=1.0, kill_grace=1.0)
    assert outcome.status == "failed" and outcome.error == "timed out after 1 s"
    assert time.monotonic() - started < 5
    assert not process_alive(outcome.pid)


def test_an_exception_in_the_runner_kills_the_tree_fails_the_job_and_propagates(store, settings,
                                                                                 tmp_path):
    """What RQ's death penalty does: an exception raised by a signal handler mid-run."""
    store.create_job("j", "p", steps=["a"], pipeline="command")
    pids_file = tmp_path / "pids"

    class DeathPenalty(Exception):
        pass

    def alarm(signum, frame):
        raise DeathPenalty("too slow")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        with pytest.raises(DeathPenalty):
            run_command(store, "j", program(TREE, str(pids_file)), steps=["a"], settings=settings,
                        kill_grace=2.0,
                        describe_exception=lambda exc: f"described: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    snap = store.get("j")
    assert snap["status"] == "failed" and snap["error"] == "described: too slow"
    pids = read_pids(pids_file)
    assert pids and not [p for p in pids if process_alive(p)]


def test_a_command_that_cannot_start_fails_the_job(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    outcome = run_command(store, "j", [str(tmp_path / "no-such-program")], steps=["a"],
                          settings=settings)
    assert outcome.status == "failed" and outcome.shell_exit_code == 127
    snap = store.get("j")
    assert snap["status"] == "failed" and snap["error"].startswith("cannot start")


def test_a_job_canceled_before_it_starts_never_runs_its_command(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    store.update("j", status="canceled")
    marker = tmp_path / "ran"
    outcome = run_command(store, "j", program("import sys; open(sys.argv[1], 'w')", str(marker)),
                          steps=["a"], settings=settings)
    assert outcome.status == "canceled" and outcome.pid is None
    assert not marker.exists()


def test_an_unknown_job_is_an_error_and_nothing_runs(store, settings, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(JobNotFound):
        run_command(store, "nope", program("import sys; open(sys.argv[1], 'w')", str(marker)),
                    steps=["a"], settings=settings)
    assert not marker.exists()


def test_processes_left_behind_by_a_finished_command_are_killed(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open(sys.argv[1], "w").write(f"{child.pid}\\n")
    """
    pid_file = tmp_path / "pid"
    outcome = run_command(store, "j", program(source, str(pid_file)), steps=["a"], settings=settings,
                          kill_grace=1.0)
    assert outcome.status == "completed"
    (pid,) = read_pids(pid_file)
    assert wait_until(lambda: not process_alive(pid), timeout=5)


# A daemon the classic way: fork, setsid, fork again, the middle process exits. The
# daemon (its pid written to argv[1]) has no parent link to the job and a session of
# its own; only the PROGRESS_JOB_ID it inherited says whose it is. Then the command
# prints a step and, with argv[2] == "wait", waits to be stopped.
DAEMON = """
    import os, sys, time
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            with open(sys.argv[1] + ".tmp", "w") as f:
                f.write(f"{os.getpid()}\\n")
            os.rename(sys.argv[1] + ".tmp", sys.argv[1])
            time.sleep(120)
        os._exit(0)
    os.waitpid(middle, 0)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    print("STEP a", flush=True)
    print("PROGRESS 10 daemon started", flush=True)
    if sys.argv[2] == "wait":
        time.sleep(120)
"""


def test_a_double_forked_daemon_dies_with_a_canceled_job(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    pid_file = tmp_path / "daemon"
    thread, result = run_in_thread(store, program(DAEMON, str(pid_file), "wait"),
                                   steps=["a"], settings=settings, kill_grace=2.0)
    try:
        (daemon,) = wait_until(lambda: read_pids(pid_file), timeout=15)
        assert process_alive(daemon)
        assert wait_until(lambda: store.get("j")["progress_percent"] == 10, timeout=5)
        assert store.update("j", status="canceled").accepted
    finally:
        thread.join(30)
    assert result["outcome"].status == "canceled" and result["outcome"].survivors == []
    assert not process_alive(daemon), "the double-forked daemon outlived its canceled job"


def test_a_double_forked_daemon_left_by_a_finished_command_is_killed(store, settings, tmp_path):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    pid_file = tmp_path / "daemon"
    outcome = run_command(store, "j", program(DAEMON, str(pid_file), "exit"), steps=["a"],
                          settings=settings, kill_grace=1.0)
    assert outcome.status == "completed"
    (daemon,) = read_pids(pid_file)
    assert wait_until(lambda: not process_alive(daemon), timeout=5)


# Another deployment's command: writes its pid to argv[1], waits (a minute at most) for
# argv[2] to exist, then completes.
WAIT_FOR_FILE = """
    import os, sys, time
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    deadline = time.monotonic() + 60
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("STEP a", flush=True)
"""


@pytest.mark.parametrize("ending", ["exits", "canceled"])
def test_a_run_that_ends_leaves_another_deployments_command_of_the_same_job_id_alone(
        store, settings, key_prefix, tmp_path, ending):
    """Two deployments (two key prefixes) on one machine each run a job "j". The one that
    ends kills what its command left behind (or, canceled, its whole tree) by its run's
    own tag: the other's command, whose environment says PROGRESS_JOB_ID=j too, lives on."""
    other_settings = dataclasses.replace(settings, key_prefix=f"{key_prefix}-other")
    other = ProgressStore(connect(other_settings), other_settings)
    other.create_job("j", "p", steps=["a"], pipeline="command")
    pid_file, release = tmp_path / "other-pid", tmp_path / "release"
    results: dict = {}
    others_run = threading.Thread(target=lambda: results.update(other=run_command(
        other, "j", program(WAIT_FOR_FILE, str(pid_file), str(release)), steps=["a"],
        settings=other_settings)))
    others_run.start()
    try:
        (others_command,) = wait_until(lambda: read_pids(pid_file), timeout=15)
        store.create_job("j", "p", steps=["a"], pipeline="command")
        if ending == "exits":
            results["ours"] = run_command(store, "j", program('print("STEP a")'), steps=["a"],
                                          settings=settings, kill_grace=1.0)
        else:
            ours = threading.Thread(target=lambda: results.update(ours=run_command(
                store, "j", program('import time; print("STEP a", flush=True); time.sleep(120)'),
                steps=["a"], settings=settings, kill_grace=1.0)))
            ours.start()
            assert wait_until(lambda: store.get("j")["current_step"] == "a", timeout=10)
            assert store.update("j", status="canceled").accepted
            ours.join(30)
        assert results["ours"].status == ("completed" if ending == "exits" else "canceled")
        assert process_alive(others_command), "ending one deployment's job killed the other's command"
    finally:
        release.touch()
        others_run.join(30)
        other.client.close()
    assert results["other"].status == "completed", results["other"]
    assert other.get("j")["status"] == "completed"


def test_impossible_progress_lines_are_warned_about_a_few_times_and_change_nothing(
        store, settings, caplog):
    caplog.set_level("DEBUG", logger="worker.runner")
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    source = """
        print("STEP a")
        print("PROGRESS 40 fine")
        print("PROGRESS 150 too far")
        print("STEP no-such-step")
        print("just output, not for us")
        for i in range(30):
            print("PROGRESS banana")
        print("PROGRESS 60 still fine")
    """
    unthrottled = dataclasses.replace(settings, min_interval=0.0)  # every change its own write
    outcome = run_command(store, "j", program(source), steps=["a", "b"], settings=unthrottled)
    assert outcome.status == "completed"
    history = [h["progress_percent"] for h in store.history("j")]
    assert history[-3:] == [40, 60, 100], history  # the bad lines moved nothing
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "worker.runner" and r.levelname == "WARNING"]
    assert len(warnings) == 5, warnings  # not 32: a pipeline printing garbage must not flood the log
    assert "PROGRESS 150 is outside 0..100: 'PROGRESS 150 too far'" in warnings[0]
    assert "unknown step 'no-such-step': the steps are a, b" in warnings[1]
    assert "further ones are logged at debug level" in warnings[-1]
    assert not any("just output" in w for w in warnings)


def test_the_output_hook_sees_every_line(store, settings):
    store.create_job("j", "p", steps=["a"], pipeline="command")
    seen = []
    source = """
        import sys
        print("one"); print("two", file=sys.stderr); sys.stdout.write("three\\rfour")
    """
    run_command(store, "j", program(source), steps=["a"], settings=settings,
                on_output=lambda stream, line: seen.append((stream, line)))
    assert sorted(seen) == sorted([("stdout", "one"), ("stderr", "two"), ("stdout", "three"),
                                   ("stdout", "four")])


def test_writes_reach_the_hook_with_their_results(store, settings):
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    writes = []
    run_command(store, "j", program('print("STEP a"); print("STEP b")'), steps=["a", "b"],
                settings=settings, on_write=lambda fields, r: writes.append((dict(fields), r.reason)))
    assert writes[0] == ({"status": "running"}, "ok")
    assert [f.get("current_step") for f, _ in writes if "current_step" in f] == ["a", "b"]
    assert writes[-1][0].get("status") == "completed"
    assert json.dumps(writes)  # plain data


# -- Redis away for a moment -----------------------------------------------------------


def test_a_job_that_ends_while_redis_is_away_is_recorded_when_it_returns(real_redis, settings,
                                                                          tmp_path, caplog):
    proxy = TcpProxy(settings.progress_redis_url)
    proxy.up()
    via_proxy = dataclasses.replace(settings, progress_redis_url=proxy.url)
    store = ProgressStore(connect(via_proxy), via_proxy)
    direct = ProgressStore(connect(settings), settings)
    store.create_job("j", "p", steps=["a", "b"], pipeline="command")
    go = tmp_path / "go"
    source = """
        import json, os, sys, time
        print("STEP a", flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
        print("STEP b", flush=True)
        print("PROGRESS 80 written while Redis is away", flush=True)
        print(json.dumps({"result": {"ok": 1}}), flush=True)
    """
    thread, result = run_in_thread(store, program(source, str(go)),
                                   steps=["a", "b"], settings=via_proxy)
    try:
        assert wait_until(lambda: direct.get("j")["current_step"] == "a", timeout=10)
        proxy.down()
        go.touch()  # the command goes on and ends while its writes fail
        wait_until(lambda: "the final write failed" in caplog.text,
                   what="the runner's final write to fail while Redis is away")
        assert direct.get("j")["status"] == "running"
        proxy.up()
    finally:
        thread.join(30)
        proxy.down()
        store.client.close()
    assert result["outcome"].status == "completed"
    snap = direct.get("j")
    assert snap["status"] == "completed" and snap["result"] == {"ok": 1, "exit_code": 0}
    direct.client.close()


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_a_result_the_store_refuses_still_completes_the_job_saying_why(store, settings, caplog, bad):
    """Python's json reads NaN and Infinity; the store refuses them (not JSON). The job must
    not stay running until a sweeper fails it as "worker lost"."""
    store.create_job("j", "p", steps=["a"], pipeline="command")
    source = f"""
        print("STEP a", flush=True)
        print('{{"result": {{"x": {bad}, "video_url": "file:///tmp/x.mp4"}}}}', flush=True)
    """
    outcome = run_command(store, "j", program(source), steps=["a"], settings=settings)
    assert outcome.status == "completed" and outcome.exit_code == 0, outcome
    snap = store.get("j")
    assert snap["status"] == "completed" and snap["progress_percent"] == 100
    assert snap["result"] == {"exit_code": 0} == outcome.result
    assert "result was not stored" in snap["message"] and "JSON" in snap["message"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# -- Redis restarted empty mid-job ----------------------------------------------------


# The command announces step a and 20%, waits for the file argv[1], then goes through
# steps b and c and ends with a result line.
WAITS_THEN_FINISHES = """
    import json, os, sys, time
    print("STEP 1/3 a", flush=True)
    print("PROGRESS 20 in a", flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    print("STEP b", flush=True)
    time.sleep(0.15)
    print("PROGRESS 50 in b", flush=True)
    time.sleep(0.15)
    print("STEP c", flush=True)
    print("PROGRESS 90 in c", flush=True)
    print(json.dumps({"result": {"ok": 1}}), flush=True)
"""


def _run_across_a_restart(restartable_redis, settings, tmp_path, *, before_go=None,
                          go=True, record=None, **overrides):
    """Run WAITS_THEN_FINISHES as job "j"; restart Redis empty while it waits; then
    ``before_go(store, seq_before)`` and (unless ``go`` is false: then it must end
    otherwise) let it finish. Returns (outcome, store, seq_before, the seqs the runner
    got from the store after the restart). ``record["before_restart"]`` gets the job's
    last snapshot before the restart."""
    own = dataclasses.replace(settings, redis_url=restartable_redis.url,
                              progress_redis_url=restartable_redis.url, **overrides)
    store = ProgressStore(connect(own), own)
    store.create_job("j", "p", steps=["a", "b", "c"], pipeline="command")
    seqs: list[tuple[bool, int]] = []  # (after the restart?, seq)
    restarted = threading.Event()
    go_file = tmp_path / "go"
    result = {}

    def run():
        result["outcome"] = run_command(
            store, "j", program(WAITS_THEN_FINISHES, str(go_file)), steps=["a", "b", "c"],
            settings=own,
            on_write=lambda fields, r: r.accepted and seqs.append((restarted.is_set(), r.seq)))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert wait_until(lambda: (store.get("j") or {}).get("progress_percent") == 20, timeout=10)
        snap_before = store.get("j")
        seq_before = snap_before["seq"]
        if record is not None:
            record["before_restart"] = snap_before
        restartable_redis.crash_and_restart()
        restarted.set()
        assert store.get("j") is None  # the store lost the job
        if before_go is not None:
            before_go(store, seq_before)
        if go:
            go_file.touch()
        else:
            thread.join(10)
    finally:
        go_file.touch()
        thread.join(30)
    seq_before = max([seq_before] + [s for after, s in seqs if not after])
    return result["outcome"], store, seq_before, [s for after, s in seqs if after]


def _assert_completed_above(store, seq_before, seqs_after):
    snap = store.get("j")
    assert snap["status"] == "completed" and snap["result"] == {"ok": 1, "exit_code": 0}
    assert snap["completed_steps"] == ["a", "b", "c"] and snap["progress_percent"] == 100
    assert snap["paper_id"] == "p" and snap["pipeline"] == "command"
    history = store.history("j")
    assert history and min(h["seq"] for h in history) > seq_before
    assert seqs_after and min(seqs_after) > seq_before
    assert snap["seq"] > seq_before
    assert store.recent_job_ids(paper_id="p") == ["j"] and "j" in store.recent_job_ids()


def test_a_job_lost_by_a_redis_restart_is_recreated_by_the_next_write_and_completes(
        restartable_redis, settings, tmp_path, caplog):
    # heartbeats 5 s apart: within the run, only a progress write can find the job gone
    caplog.set_level("WARNING", logger="worker.runner")
    outcome, store, seq_before, seqs_after = _run_across_a_restart(
        restartable_redis, settings, tmp_path, worker_lost_after=60)
    try:
        assert outcome.status == "completed" and outcome.stopped_by is None, outcome
        _assert_completed_above(store, seq_before, seqs_after)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [w for w in warnings if "job j: " in w and "re-creating" in w], warnings
    finally:
        store.client.close()


def test_a_job_lost_by_a_redis_restart_is_recreated_by_the_heartbeat(restartable_redis,
                                                                      settings, tmp_path):
    seen = {}

    def before_go(store, seq_before):
        # the command prints nothing now: the heartbeat (every second here) finds the
        # job gone and re-creates it as it was: running, in step a, at 20%
        snap = wait_until(lambda: store.get("j"), timeout=5)
        assert snap, "the job was not re-created"
        assert snap["status"] == "running", "re-created as pending: readers saw it move back"
        seen["snap"] = store.get("j")
        seen["history"] = store.history("j")

    outcome, store, seq_before, seqs_after = _run_across_a_restart(
        restartable_redis, settings, tmp_path, before_go=before_go, record=seen)
    try:
        snap, lost = seen["snap"], seen["before_restart"]
        assert (snap["current_step"], snap["progress_percent"], snap["message"]) == ("a", 20, "in a")
        assert snap["seq"] > seq_before
        # one entry, one event: the job came back as it was, not pending/0 and then restored
        first = seen["history"][0]
        assert (first["seq"], first["status"], first["current_step"], first["progress_percent"]) == (
            seq_before + 1, "running", "a", 20)
        # the page goes on saying when the job was created and started, not "just now"
        assert (snap["created_at"], snap["started_at"]) == (lost["created_at"], lost["started_at"])
        assert outcome.status == "completed", outcome
        _assert_completed_above(store, seq_before, seqs_after)
    finally:
        store.client.close()


class EventRecorder:
    """A raw pub/sub subscriber of job "j"'s channel, in a thread, that records every event it
    receives (no seq filter, unlike store.subscribe) and reconnects across a Redis restart.
    ``resubscribed()`` is true once it hears on the channel again after ``restarted()``."""

    def __init__(self, store: ProgressStore) -> None:
        self.client = connect(store.settings)
        self.channel = store.keys.events("j")
        self.probe_channel = self.channel + ":probe"  # a channel of the test's own, same prefix
        self.events: list[tuple[bool, dict]] = []  # (after the restart?, event)
        self.after_restart = False
        self.back = threading.Event()
        self.done = threading.Event()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel, self.probe_channel)
        self.pubsub.get_message(timeout=1)  # the first confirmation: subscribed
        self.thread = threading.Thread(target=self._record, daemon=True)
        self.thread.start()

    def _record(self) -> None:
        while not self.done.is_set():
            try:
                m = self.pubsub.get_message(timeout=0.05)  # reconnects and resubscribes
            except (OSError, redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
                continue
            if m is None or m["type"] != "message":
                continue
            if m["channel"] == self.probe_channel:
                self.back.set()
                continue
            event = json.loads(m["data"])
            self.events.append((self.after_restart, event))
            if event["status"] in ("completed", "failed", "canceled"):
                return

    def restarted(self) -> None:
        self.after_restart = True

    def resubscribed(self) -> bool:
        try:
            self.client.publish(self.probe_channel, "{}")
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        return self.back.wait(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.pubsub.close()
        self.client.close()


def _position(event: dict, steps: list[str]) -> tuple:
    """How far an event shows the job: (status rank, steps done, step, percent)."""
    rank = {"pending": 0, "running": 1}.get(event["status"], 2)
    step = steps.index(event["current_step"]) if event["current_step"] else len(event["completed_steps"])
    return rank, len(event["completed_steps"]), step, event["progress_percent"]


def test_no_event_shows_a_job_moving_back_while_its_runner_recreates_it(restartable_redis, settings,
                                                                         tmp_path):
    """README, "Redis pub/sub": a subscriber started before an empty Redis restart records every
    event of a running job through the kill and restart. The re-created job's first event
    already shows it running at its step, percent and start time; none after the restart
    shows a lower percent, an earlier step or an earlier status than one before it."""
    recorder: dict[str, EventRecorder] = {}

    def before_go(store, seq_before):
        recorder["r"].restarted()
        # heartbeats 5 s apart: the job is re-created by the command's next write, which
        # comes once the subscriber is back
        assert wait_until(recorder["r"].resubscribed, timeout=5), "the subscriber did not reconnect"
        assert store.get("j") is None

    seen: dict = {}
    own = dataclasses.replace(settings, redis_url=restartable_redis.url,
                              progress_redis_url=restartable_redis.url)
    recorder["r"] = EventRecorder(ProgressStore(connect(own), own))
    try:
        outcome, store, seq_before, _ = _run_across_a_restart(
            restartable_redis, settings, tmp_path, before_go=before_go, record=seen,
            worker_lost_after=60)
        recorder["r"].thread.join(10)  # it ends after the terminal event
    finally:
        recorder["r"].close()
    try:
        assert outcome.status == "completed", outcome
        events = recorder["r"].events
        before = [e for after, e in events if not after]
        after = [e for after, e in events if after]
        lost = seen["before_restart"]
        assert before and before[-1]["seq"] == seq_before and before[-1]["progress_percent"] == 20
        assert after and after[-1]["status"] == "completed"
        first = after[0]  # the re-creation, as the write that found the job gone saw it
        assert first["seq"] == seq_before + 1 and first["status"] == "running"
        assert first["started_at_ms"] == ms_from_iso(lost["started_at"])
        assert _position(first, ["a", "b", "c"]) >= _position(before[-1], ["a", "b", "c"])
        steps = ["a", "b", "c"]
        for a, b in zip(events, events[1:], strict=False):
            assert b[1]["seq"] > a[1]["seq"], (a, b)
            assert all(x <= y for x, y in zip(_position(a[1], steps), _position(b[1], steps),
                                               strict=True)), (a, b)
        assert store.history("j")[0]["status"] == "running"  # nor does the history start over
    finally:
        store.client.close()


def test_a_cancel_after_a_redis_restart_still_stops_the_command(restartable_redis, settings,
                                                                 tmp_path):
    def cancel(store, seq_before):
        assert wait_until(lambda: (store.get("j") or {}).get("status") == "running", timeout=5)
        assert store.update("j", status="canceled").accepted

    outcome, store, _, _ = _run_across_a_restart(restartable_redis, settings, tmp_path,
                                                 before_go=cancel, go=False)
    try:
        # killed while it waited for a go that never came
        assert outcome.status == "canceled" and outcome.stopped_by == "finished in the store"
        assert outcome.exit_code == -signal.SIGTERM and outcome.survivors == []
        assert store.get("j")["status"] == "canceled"
    finally:
        store.client.close()
