"""The snapshot endpoint's requests/s under gunicorn, against a bare Flask endpoint that only does HGETALL.

    .venv/bin/python bench/api_bench.py [--seconds 5] [--rounds 2] [--concurrency 16]

Two servers with the same gunicorn settings (``progress-service web``'s
command line: one gevent worker, the same Redis pool): the real app
(``GET /api/v1/jobs/<job_id>``: the read_job script, the snapshot with its ETA,
the error handler, metrics and no-cache headers) and the floor, a Flask app
whose one endpoint returns ``HGETALL`` of the same job hash as JSON. A gevent
client with keep-alive connections loads one server at a time on loopback, in
short rounds that alternate (and swap which goes first), so that a busy moment
slows both alike; the ratio is the median of the rounds' ratios, and each rate
the median of its rounds. Target: the snapshot endpoint at >= 0.8x the floor.
Exit status 1 below it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import gevent
import redis
from gevent import socket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402

from progress_cli.embedded import find_free_port  # noqa: E402
from progress_cli.web_commands import gunicorn_argv  # noqa: E402
from progress_service.config import Settings  # noqa: E402
from progress_service.keys import Keys  # noqa: E402
from progress_service.models import DEFAULT_STEPS  # noqa: E402
from progress_service.store import ProgressStore  # noqa: E402

TARGET_RATIO = 0.8


def create_bare_app():
    """The floor: a Flask app with one endpoint that returns HGETALL of a job hash as JSON."""
    from flask import Flask, jsonify

    from web import redis_client

    settings = Settings.from_env()
    client = redis_client(settings, pool_size=settings.web_redis_pool, role="bare")
    keys = Keys(settings.key_prefix)
    app = Flask("bare")

    @app.get("/bare/<job_id>")
    def bare(job_id: str):
        return jsonify(client.hgetall(keys.job(job_id)))

    return app


def load(port: int, path: str, seconds: float, concurrency: int) -> float:
    """Requests per second over ``seconds``, from ``concurrency`` keep-alive connections."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(index: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        buffer = b""
        while time.perf_counter() < stop_at:
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{path}: {head.splitlines()[0]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            counts[index] += 1
        sock.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, i) for i in range(concurrency)], raise_error=True)
    return sum(counts) / (time.perf_counter() - started)


def start(app: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = find_free_port()
    argv = gunicorn_argv("127.0.0.1", port, 1)
    argv[-1] = app
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc, port
        except urllib.error.HTTPError:
            return proc, port  # it answers (a 404 is an answer)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gunicorn ({app}) did not start") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.5, help="length of one measured round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per server, alternating")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    args = parser.parse_args()

    redis_url = _common.redis_url()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_url, "PROGRESS_KEY_PREFIX": prefix,
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = ProgressStore(client, Settings.from_env(env))
    job_id = "bench-job"
    store.create_job(job_id, "31452104", steps=DEFAULT_STEPS)
    for i in range(1, 41):  # a job in flight with a history, as a page would read it
        store.update(job_id, status="running", progress_percent=i, current_step=DEFAULT_STEPS[i // 20],
                     message=f"update {i}")

    servers = {}
    try:
        servers["snapshot"] = start("web:create_app()", env)
        servers["floor"] = start("api_bench:create_bare_app()", env)
        paths = {"snapshot": f"/api/v1/jobs/{job_id}", "floor": f"/bare/{job_id}"}
        for name in servers:  # warm both up
            load(servers[name][1], paths[name], 1.0, args.concurrency)
        rates: dict[str, list[float]] = {name: [] for name in servers}
        ratios = []
        for round_no in range(1, args.rounds + 1):
            order = ("floor", "snapshot") if round_no % 2 else ("snapshot", "floor")
            for name in order:
                rps = load(servers[name][1], paths[name], args.seconds, args.concurrency)
                rates[name].append(rps)
                print(f"round {round_no}: {name:8s} {rps:8.0f} req/s")
            ratios.append(rates["snapshot"][-1] / rates["floor"][-1])
        ratio = statistics.median(ratios)
        print(f"snapshot endpoint: {statistics.median(rates['snapshot']):.0f} req/s; bare HGETALL floor: "
              f"{statistics.median(rates['floor']):.0f} req/s; ratio {ratio:.2f}x (median of {len(ratios)} "
              f"rounds, {min(ratios):.2f}-{max(ratios):.2f}; target >= {TARGET_RATIO}x)")
        print("PASS" if ratio >= TARGET_RATIO else "FAIL")
        return 0 if ratio >= TARGET_RATIO else 1
    finally:
        for proc, _port in servers.values():
            proc.terminate()
            proc.wait(20)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)
        client.close()


if __name__ == "__main__":
    sys.exit(main())
