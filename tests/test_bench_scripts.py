"""The issue-14 benches still run, at tiny sizes (they are not part of the test run otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.backend, pytest.mark.slow]


def run_bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: a target missed, at these sizes
    return proc.stdout


def test_peer_bench_runs_and_says_why_bullmq_is_skipped(tmp_path, redis_server_bin):
    out = run_bench("peer_bench.py", "--jobs", "50", "--rounds", "1", "--updates", "10",
                    "--readers", "5", "--no-sse", "--cache", str(tmp_path), "--npm", "no-such-npm")
    assert "BullMQ skipped: npm is not installed" in out
    assert "Redis CPU per update" in out and "memory of one running job after 10 updates" in out
    assert "pubsub" in out


def test_scale_bench_runs(redis_server_bin):
    out = run_bench("scale_bench.py", "--jobs", "50", "--seconds", "2", "--sample", "2", "--no-cluster")
    assert "updates/s" in out and "SSE delay ms" in out and "missing 0" in out


def test_dashboard_bench_runs():
    out = run_bench("dashboard_bench.py", "--jobs", "60", "--dashboards", "5", "--updates", "100")
    assert "counts' read of 60 jobs" in out and "100 of 100 each" in out and "dashboard: goal met" in out
