"""Server-Sent Events against a real gunicorn (gevent worker) on loopback, on the real Redis.

One server per module, started the way ``progress-service web`` starts it
(``progress_cli.web_commands.gunicorn_argv``), its environment pointing at this
module's own key prefix. The jobs are driven from the test through the store.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from helpers import CLOSED_DATABASE_URL, wait_until
from tcp_proxy import TcpProxy

from progress_cli.embedded import find_free_port
from progress_cli.web_commands import gunicorn_argv
from progress_service.config import Settings
from progress_service.models import DEFAULT_STEPS
from progress_service.store import ProgressStore

ROOT = Path(__file__).resolve().parent.parent
STEPS = list(DEFAULT_STEPS)
READ_TIMEOUT = 10.0  # seconds a stream may stay silent before a test fails


class GunicornServer:
    """``progress-service web``'s gunicorn in a subprocess, on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int = 1, log_path: Path | None = None) -> None:
        self.port = find_free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.log_path = log_path or Path(f"/tmp/gunicorn-{self.port}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(gunicorn_argv("127.0.0.1", self.port, workers), env=full_env,
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, timeout=30, interval=0.1, what=f"gunicorn on port {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"gunicorn did not come up:\n{self.log()}") from None

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.base + "/api/v1/jobs?limit=1", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str) -> float:
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"/metrics has no {name}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class Event:
    id: int
    event: str
    data: dict


class EventStream:
    """A minimal SSE client on http.client: one event at a time, comments counted."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None,
                 timeout: float = READ_TIMEOUT) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.comments = 0
        self.closed_by_server = False

    @property
    def status(self) -> int:
        return self.response.status

    def next_event(self) -> Event | None:
        """The next event, or None once the server has closed the stream."""
        fields: dict[str, str] = {}
        while True:
            raw = self.response.readline()
            if not raw:
                self.closed_by_server = True
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if "data" in fields:
                    return Event(int(fields["id"]), fields.get("event", "message"), json.loads(fields["data"]))
                fields = {}
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    def events_until_closed(self, limit: int = 10_000) -> list[Event]:
        events = []
        while len(events) < limit:
            event = self.next_event()
            if event is None:
                return events
            events.append(event)
        raise AssertionError(f"the stream did not close after {limit} events")

    def close(self) -> None:
        self.conn.close()


def server_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "PROGRESS_KEY_PREFIX": prefix,
        "DATABASE_URL": CLOSED_DATABASE_URL,
        "PROGRESS_STALE_AFTER": "2",
        "PROGRESS_PENDING_STALE_AFTER": "3",
        "PROGRESS_MIN_INTERVAL": "0",
        "PROGRESS_QUEUE": f"{prefix}-pipelines",
        **extra,
    }


@pytest.fixture(scope="module")
def server(real_redis_url, module_key_prefix):
    srv = GunicornServer(server_env(real_redis_url, module_key_prefix))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sse_store(real_redis_url, module_key_prefix):
    settings = Settings.from_env(server_env(real_redis_url, module_key_prefix))
    client = redis.Redis.from_url(real_redis_url, decode_responses=True)
    yield ProgressStore(client, settings)
    client.close()


def new_job(store, paper_id="31452104") -> str:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, paper_id, steps=STEPS)
    return job_id


def drive(store, job_id, updates: int = 30, complete: bool = True, top: float = 99) -> int:
    """Run the job up to ``top`` percent as fast as Redis takes it, then complete it; the last seq."""
    seq = 0
    for i in range(1, updates + 1):
        percent = round(i * top / updates, 1)
        step = STEPS[min(int(percent // 20), len(STEPS) - 1)]
        r = store.update(job_id, status="running", progress_percent=percent, current_step=step,
                         message=f"update {i}")
        assert r.accepted and r.reason == "ok", r
        seq = r.seq
    if complete:
        r = store.update(job_id, progress_percent=100, result={"video_url": "file:///tmp/x.mp4"})
        assert r.status == "completed"
        seq = r.seq
    return seq


def test_a_client_gets_every_change_in_order_and_the_stream_closes(server, sse_store):
    job_id = new_job(sse_store)
    stream = EventStream(server.base, f"/api/v1/jobs/{job_id}/events")
    assert stream.status == 200
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    assert stream.response.getheader("Cache-Control") == "no-cache, no-store, must-revalidate"
    first = stream.next_event()
    assert (first.id, first.event, first.data["status"]) == (1, "progress", "pending")

    last_seq: list[int] = []
    driver = threading.Thread(target=lambda: last_seq.append(drive(sse_store, job_id)))
    driver.start()
    events = stream.events_until_closed()
    driver.join(10)
    stream.close()

    assert stream.closed_by_server
    assert [e.id for e in events] == list(range(2, last_seq[0] + 1))  # every change, once, in order
    assert all(e.event == "progress" and e.data["seq"] == e.id for e in events)
    percents = [e.data["progress_percent"] for e in events]
    assert percents == sorted(percents)
    assert events[-1].data["status"] == "completed" and events[-1].data["progress_percent"] == 100
    assert events[-1].data["completed_steps"] == STEPS
    assert events[-1].data["result"] == {"video_url": "file:///tmp/x.mp4"}
    assert events[-1].data == sse_store.get(job_id) | {"is_stale": False, "eta_seconds": None}


def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed(server, sse_store):
    job_id = new_job(sse_store)
    drive(sse_store, job_id, updates=3, complete=False, top=30)  # seq 4, in step 2
    first = EventStream(server.base, f"/api/v1/jobs/{job_id}/events")
    seen = first.next_event()
    assert seen.id == 4 and seen.data["message"] == "update 3"
    first.close()  # the client goes away...

    for i, percent in enumerate((40, 50, 60, 70, 80), start=1):  # ...and misses seq 5 to 9
        sse_store.update(job_id, progress_percent=percent, current_step=STEPS[3], message=f"missed {i}")

    again = EventStream(server.base, f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seen.id)})
    replayed = [again.next_event() for _ in range(5)]
    assert [e.id for e in replayed] == [5, 6, 7, 8, 9]
    assert [e.data["progress_percent"] for e in replayed] == [40, 50, 60, 70, 80]
    assert replayed[-1].data["message"] == "missed 5"  # the newest is the full current snapshot
    assert all(e.data["current_step"] == STEPS[3] for e in replayed)

    sse_store.update(job_id, progress_percent=90)  # live again, after the replay: no repeat, no gap
    sse_store.update(job_id, status="completed")
    rest = again.events_until_closed()
    again.close()
    assert [e.id for e in rest] == [10, 11]
    assert rest[-1].data["status"] == "completed"


def test_a_finished_job_sends_its_last_state_and_closes(server, sse_store):
    job_id = new_job(sse_store)
    seq = drive(sse_store, job_id, updates=2)
    stream = EventStream(server.base, f"/api/v1/jobs/{job_id}/events")
    events = stream.events_until_closed()
    stream.close()
    assert [(e.id, e.data["status"]) for e in events] == [(seq, "completed")]
    status, body = server.get("/api/v1/jobs/no-such-job/events")
    assert status == 503 and "postgres" in json.loads(body)["detail"]  # PostgreSQL, down here, might know it


def raw_get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """(head, body) of one request, read off the socket to its end: what the server really sent."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body


def test_a_reconnect_to_an_ended_job_with_its_last_event_is_204_no_content(server, sse_store):
    """204 is what makes a browser's EventSource stop reconnecting to a stream that has ended."""
    job_id = new_job(sse_store)
    seq = drive(sse_store, job_id, updates=3)
    path = f"/api/v1/jobs/{job_id}/events"
    final = EventStream(server.base, path)
    assert [e.id for e in final.events_until_closed()] == [seq]  # no Last-Event-ID: the end, then close
    final.close()

    head, body = raw_get(server.base, path, {"Last-Event-ID": str(seq)})  # what EventSource sends next
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    assert status_line.split()[1] == "204", head
    assert body == b""
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert headers["pragma"] == "no-cache" and headers["expires"] == "0"
    assert "transfer-encoding" not in headers and headers.get("content-length", "0") == "0"

    assert server.get(f"{path}?last_event_id={seq}") == (204, b"")  # for clients that cannot set the header
    assert server.get(f"{path}?last_event_id={seq + 5}") == (204, b"")  # has seen more than there is


def test_a_reconnect_to_an_ended_job_with_a_lower_id_gets_what_it_missed_then_the_end(server, sse_store):
    job_id = new_job(sse_store)
    seq = drive(sse_store, job_id, updates=5)  # seq 7: 1 pending, 2..6 running, 7 completed
    stream = EventStream(server.base, f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seq - 3)})
    assert stream.status == 200
    events = stream.events_until_closed()
    stream.close()
    assert stream.closed_by_server
    assert [e.id for e in events] == [seq - 2, seq - 1, seq]  # exactly the missed ones, once, in order
    assert [e.data["status"] for e in events] == ["running", "running", "completed"]
    assert events[-1].data == sse_store.get(job_id) | {"is_stale": False, "eta_seconds": None}
    # the client now holds the last event: its next reconnect is told to stop
    assert server.get(f"/api/v1/jobs/{job_id}/events?last_event_id={events[-1].id}") == (204, b"")


def test_a_running_job_is_never_204(server, sse_store):
    job_id = new_job(sse_store)
    seq = drive(sse_store, job_id, updates=2, complete=False)
    stream = EventStream(server.base, f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seq)})
    assert stream.status == 200  # up to date but not ended: the stream waits for the next change
    done = sse_store.update(job_id, status="completed").seq
    assert [e.id for e in stream.events_until_closed()] == [done]
    stream.close()


def web_connections(real_redis, prefix: str) -> list[dict]:
    return [c for c in real_redis.client_list() if c.get("name", "").startswith(f"{prefix}.web.")]


def test_fifty_clients_share_one_redis_connection(server, sse_store, real_redis, module_key_prefix):
    job_id = new_job(sse_store)
    sse_store.update(job_id, status="running", current_step=STEPS[0], progress_percent=1)
    streams = [EventStream(server.base, f"/api/v1/jobs/{job_id}/events") for _ in range(50)]
    try:
        assert all(s.next_event().id == 2 for s in streams)
        assert server.metric("progress_sse_clients") == 50

        connections = web_connections(real_redis, module_key_prefix)
        (worker,) = server.worker_pids()
        assert {c["name"].split(".")[-2] for c in connections} == {str(worker)}
        listeners = [c for c in connections if c["name"].endswith(".events")]
        assert len(listeners) == 1, connections  # one pub/sub connection for all 50 streams
        assert int(listeners[0]["sub"]) == 1
        assert len(connections) <= 4, connections

        seq = sse_store.update(job_id, progress_percent=50, current_step=STEPS[2]).seq
        assert all(s.next_event().id == seq for s in streams)
        done = sse_store.update(job_id, status="completed").seq
        for s in streams:
            assert [e.id for e in s.events_until_closed()] == [done]
    finally:
        for s in streams:
            s.close()
    wait_until(lambda: server.metric("progress_sse_clients") == 0, what="the streams to be counted closed")
    assert len(web_connections(real_redis, module_key_prefix)) <= 4


def test_streams_catch_up_after_the_listener_loses_redis(real_redis_url, sse_store, module_key_prefix, tmp_path):
    """Changes published while the web process was cut off from Redis still reach its clients, in order."""
    proxy = TcpProxy(real_redis_url)
    proxy.up()
    srv = GunicornServer(server_env(proxy.url, module_key_prefix), log_path=tmp_path / "gunicorn.log")
    try:
        job_id = new_job(sse_store)
        sse_store.update(job_id, status="running", current_step=STEPS[0], progress_percent=5)
        stream = EventStream(srv.base, f"/api/v1/jobs/{job_id}/events", timeout=20)
        assert stream.next_event().id == 2

        proxy.down()  # the web process loses Redis: pub/sub and pool alike
        missed = [sse_store.update(job_id, progress_percent=p, message=f"during the outage {p}").seq
                  for p in (20, 30, 40)]
        proxy.up()
        events = [stream.next_event() for _ in missed]
        assert [e.id for e in events] == missed == [3, 4, 5]
        assert events[-1].data["message"] == "during the outage 40"

        done = sse_store.update(job_id, status="completed").seq
        assert [e.id for e in stream.events_until_closed()] == [done]
        stream.close()
    finally:
        srv.stop()
        proxy.down()
    assert "resubscribed" in srv.log_path.read_text() or "reconnecting" in srv.log_path.read_text()


def test_keep_alive_comments_flow_while_a_job_is_quiet(settings, real_redis):
    """Through Flask's test client, with a short keep-alive: a comment line arrives, then the events."""
    from web import create_app

    app = create_app(settings)
    app.config["PROGRESS_SSE_KEEPALIVE"] = 0.2
    store = app.extensions["progress"]
    store.create_job("quiet", "31452104", steps=STEPS)
    response = app.test_client().get("/api/v1/jobs/quiet/events", buffered=False)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry: ")
    assert b"id: 1\nevent: progress\n" in next(chunks)
    assert next(chunks) == b": keep-alive\n\n"
    store.update("quiet", status="canceled")
    rest = b"".join(chunks)  # ends after the terminal event
    assert b"id: 2\nevent: progress\n" in rest and b'"status":"canceled"' in rest
    response.close()
    assert app.extensions["progress_events"].client_count == 0
    app.extensions["progress_events"].close()


def test_the_real_server_hardens_every_answer_and_does_not_advertise_gunicorn(server, sse_store):
    """Through gunicorn itself: its Server header names no gunicorn, the security headers arrive,
    and the stream (a gevent greenlet answering in pieces) carries them too."""
    job_id = new_job(sse_store)
    sse_store.update(job_id, progress_percent=100)
    answers = []
    for path in ("/api/v1/jobs?limit=1", "/", f"/api/v1/jobs/{job_id}/events", "/no-such-page"):
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)) as conn:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            answers.append((path, response.status, response.getheaders()))
    for path, status, headers in answers:
        servers = [value for name, value in headers if name.lower() == "server"]
        assert servers == ["progress-service"], (path, headers)
        assert "gunicorn" not in str(headers).lower(), (path, headers)
        named = {name.lower(): value for name, value in headers}
        assert named["x-content-type-options"] == "nosniff", (path, status, headers)
        assert named["x-frame-options"] == "DENY" and named["referrer-policy"] == "same-origin"
        assert "frame-ancestors 'none'" in named["content-security-policy"]


def raw_request(base: str, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of the answer to ``data`` sent as it is: a request that
    no HTTP client would send."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    return status_line, headers, body


# Each request is read whole by gunicorn before it answers (a few kB at most): unread bytes
# left behind would turn its close into a reset that can swallow the answer.
@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),  # no method, path, version
    (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400),  # a broken header
    (b"GET /api/v1/jobs HTTP/9.9\r\nHost: x\r\n\r\n", 400),  # an HTTP version that is not
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # over --limit-request-line
    (b"GET /api/v1/jobs HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
     431),  # over --limit-request-fields
], ids=["request-line", "header", "version", "uri-too-long", "too-many-headers"])
def test_requests_gunicorn_refuses_itself_get_a_json_error(server, request_bytes, status):
    """gunicorn answers these before the app runs: JSON like every other error, not its HTML page."""
    status_line, headers, body = raw_request(server.base, request_bytes)
    assert status_line.startswith(f"HTTP/1.1 {status} "), (status_line, body[:200])
    assert headers["content-type"] == "application/json", (headers, body[:200])
    assert int(headers["content-length"]) == len(body)
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"
    answer = json.loads(body)
    assert set(answer) == {"error", "detail"} and answer["error"] and answer["detail"], answer
    assert b"<html" not in body


@pytest.mark.parametrize("value", [b"\xb2", b"\xc2\xb2", b"9" * 5000])
def test_a_last_event_id_that_is_no_seq_is_a_400_json_error_over_gunicorn(server, sse_store, value):
    """Raw bytes as a browser or a proxy may send them (gunicorn hands them on as latin-1)."""
    job_id = new_job(sse_store)
    request = (f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               .encode() + b"Last-Event-ID: " + value + b"\r\n\r\n")
    status_line, headers, body = raw_request(server.base, request)
    assert status_line.startswith("HTTP/1.1 400 "), (status_line, body[:200])
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "invalid_input"


def test_a_client_that_lags_a_full_queue_behind_is_told_to_resync():
    """The hub never blocks on a slow client, nor lets its queue grow without end: at
    QUEUE_LIMIT waiting events the queue is emptied and the client re-reads the store."""
    from web.fanout import QUEUE_LIMIT, RESYNC, Delivery, EventHub, Subscription

    sub = Subscription(EventHub(lambda: None, "unused"), "job-slow")
    for seq in range(1, QUEUE_LIMIT + 1):
        sub.push(Delivery(seq, {"seq": seq}))
    first = sub.get(0.1)
    assert isinstance(first, Delivery) and first.seq == 1  # below the limit: every event kept
    sub.push(Delivery(QUEUE_LIMIT + 1, {}))
    sub.push(Delivery(QUEUE_LIMIT + 2, {}))  # the queue is full again: emptied, then one resync
    assert sub.get(0.1) == RESYNC
    sub.push(Delivery(QUEUE_LIMIT + 3, {}))
    later = sub.get(0.1)
    assert isinstance(later, Delivery) and later.seq == QUEUE_LIMIT + 3
    assert sub.get(0.01) is None
