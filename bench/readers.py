"""The readers the peer and scale benches time (an SSE client of the real web app, a
pub/sub subscriber, BullMQ's XREAD), and the web server the SSE readers read from.

Imported by ``peer_bench.py`` and ``scale_bench.py`` (run as scripts from ``bench/``,
with the repository on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from progress_cli.embedded import find_free_port

ROOT = Path(__file__).resolve().parent.parent


def reader_latency(update: Callable[[int], None], wait_for: Callable[[int], None],
                   n: int) -> list[float]:
    """ms from just before ``update(i)`` to ``wait_for(i)`` seeing it, for i in 1..n."""
    out = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        update(i)
        wait_for(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


class Reader(threading.Thread):
    """A reader in a thread of its own, blocked on its source before the update is sent;
    ``wait_seq(n)`` returns once it has seen seq ``n`` (the update's writer waits on it)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.cond = threading.Condition()
        self.last_seq = 0
        self.arrived: dict[int, float] = {}  # seq -> perf_counter() when it was read
        self.error: str | None = None
        self.stop = False

    def saw(self, seq: int, at: float | None = None) -> None:
        self.arrived.setdefault(seq, time.perf_counter() if at is None else at)
        with self.cond:
            self.last_seq = max(self.last_seq, seq)
            self.cond.notify_all()

    def wait_seq(self, seq: int, timeout: float = 10) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.last_seq >= seq, timeout):
                raise TimeoutError(f"{type(self).__name__} did not see seq {seq}: {self.error}")


class SseReader(Reader):
    """One SSE client of the real web app, on a blocking socket."""

    ID_LINE = re.compile(rb"\nid: (\d+)\n")

    def __init__(self, port: int, job_id: str) -> None:
        super().__init__()
        self.port, self.job_id = port, job_id

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            sock.sendall(f"GET /api/v1/jobs/{self.job_id}/events HTTP/1.1\r\nHost: x\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            pending = b""
            while not self.stop:
                data = sock.recv(65536)
                now = time.perf_counter()
                if not data:
                    return
                pending += data
                matches = list(self.ID_LINE.finditer(pending))
                if matches:
                    pending = pending[matches[-1].end() - 1:]  # keep the newline before the next id
                    for m in matches:
                        self.saw(int(m.group(1)), now)
                else:
                    pending = pending[-64:]
        except OSError as exc:
            self.error = str(exc)


class PubSubReader(Reader):
    """A subscriber of the all-jobs channel (what the web's hub listens on): one job's seqs."""

    def __init__(self, url: str, channel: str, job_id: str) -> None:
        super().__init__()
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.job_id = job_id

    def run(self) -> None:
        while not self.stop:
            msg = self.pubsub.get_message(timeout=0.5)
            if msg is not None:
                event = json.loads(msg["data"])
                if event["job_id"] == self.job_id:
                    self.saw(event["seq"])


class XReadReader(Reader):
    """BullMQ's QueueEvents: XREAD BLOCK on the queue's event stream; the progress is the seq."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.stream = stream

    def run(self) -> None:
        last = "$"
        while not self.stop:
            reply = self.client.xread({self.stream: last}, block=500)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields.get("event") == "progress" and fields.get("jobId") == "0":
                        self.saw(int(fields["data"]))


def start_web(redis_url: str, prefix: str, **extra_env: str) -> tuple[subprocess.Popen, int]:
    """``progress-service web``'s gunicorn (one gevent worker) on a free port."""
    from progress_cli.web_commands import gunicorn_argv

    port = find_free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PROGRESS_KEY_PREFIX": prefix,
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres", "PYTHONPATH": str(ROOT),
           **extra_env}
    server = subprocess.Popen(gunicorn_argv("127.0.0.1", port, 1), env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/jobs?limit=1", timeout=2).read()
            return server, port
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("gunicorn did not start") from None
            time.sleep(0.1)


def stop_web(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
