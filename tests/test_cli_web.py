"""``progress-service web`` as a user starts it: the address first, then gunicorn."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

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
