"""``progress-service web`` as a user starts it: the address first, then gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from helpers import cli_env, wait_until

from progress_cli import exit_codes

ROOT = Path(__file__).resolve().parent.parent


def test_a_busy_port_is_one_line_and_a_config_error_before_any_claim_to_serve(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "progress_cli", "web", "--port", str(port)],
                              env=cli_env(settings), cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    assert done.returncode == exit_codes.CONFIG == 78, done.stderr
    assert done.stderr == (f"progress-service web: cannot listen on 127.0.0.1:{port}: "
                           "Address already in use; choose another --host/--port\n")
    assert done.stdout == ""


def test_a_port_out_of_range_is_a_usage_error(settings):
    done = subprocess.run([sys.executable, "-m", "progress_cli", "web", "--port", "70000"],
                          env=cli_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert "1 to 65535" in done.stderr


def test_a_malformed_web_variable_is_a_config_error_of_web_alone(settings):
    env = cli_env(settings, PROGRESS_WEB_PORT="80OO")
    papers = subprocess.run([sys.executable, "-m", "progress_cli", "papers"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert papers.returncode == 0, papers.stderr  # not a traceback of every command
    web = subprocess.run([sys.executable, "-m", "progress_cli", "web"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert web.returncode == exit_codes.CONFIG, web.stderr
    assert web.stderr == "progress-service web: PROGRESS_WEB_PORT='80OO': expected a whole number, got '80OO'\n"


def test_web_serves_on_the_socket_it_bound(settings):
    from progress_cli.embedded import find_free_port

    port = find_free_port()
    web = subprocess.Popen([sys.executable, "-m", "progress_cli", "web", "--workers", "1"],
                           env=cli_env(settings, PROGRESS_WEB_PORT=str(port)), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        def answers():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # 503: PostgreSQL is a closed port here; it answers all the same
            except OSError:
                return web.poll() is not None  # it exited: stop waiting

        assert wait_until(answers, timeout=60), "no answer"
        assert web.poll() is None
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0
    finally:
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()
    assert f"progress-service web: http://127.0.0.1:{port}/" in web.stderr.read()
