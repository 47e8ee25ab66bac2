"""The benches still run, at tiny sizes (they are not part of the test run otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.backend, pytest.mark.slow]


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120, env=None if env is None else {**os.environ, **env})
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


def test_eta_bench_runs_and_prints_its_table(postgres_url, real_redis_url):
    out = run_bench("eta_bench.py", "--history", "4", "--jobs", "2", "--job-seconds", "0.3",
                    env={"REDIS_URL": real_redis_url, "DATABASE_URL": postgres_url})
    assert "new: history + rate" in out and "old: rate only" in out and "new / old" in out
    assert all(f"{mark}%" in out for mark in (10, 50, 90)), out
    assert "target: new error <= half the old at 10 % and 50 %" in out
