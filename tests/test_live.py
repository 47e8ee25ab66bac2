"""The live dashboard's feed (web/live.py): GET /api/v1/events and GET /api/v1/overview.

Through Flask's test client on the real Redis (the app's own hub and board), and under gunicorn
for what only a real server shows: many dashboards on one Redis connection.
"""

from __future__ import annotations

import html
import http.client
import json
import time

import pytest
from helpers import wait_until
from tcp_proxy import TcpProxy
from test_api import build
from test_sse import GunicornServer, server_env, web_connections

from progress_service.config import Settings
from progress_service.store import ProgressStore
from web import live

KEEPALIVE = 0.3


@pytest.fixture
def app(settings, real_redis):
    app = build(settings)
    app.config["PROGRESS_SSE_KEEPALIVE"] = KEEPALIVE
    yield app
    app.extensions["progress_events"].close()


@pytest.fixture
def store(app):
    return app.extensions["progress"]


class Stream:
    """A dashboard stream through the test client: its events one at a time, comments counted."""

    def __init__(self, app, query: str = "") -> None:
        self.response = app.test_client().get("/api/v1/events" + query, buffered=False)
        assert self.response.status_code == 200, self.response.get_data(as_text=True)
        self.chunks = iter(self.response.response)
        self.comments = 0
        assert next(self.chunks).startswith(b"retry: ")

    def next(self, timeout: float = 5.0) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = next(self.chunks).decode()
            if chunk.startswith(":"):
                self.comments += 1
                continue
            assert "\nid:" not in chunk and not chunk.startswith("id:")  # nothing to resume from
            kind, data = (line.split(": ", 1)[1] for line in chunk.strip().split("\n"))
            return kind, json.loads(data)
        raise AssertionError(f"no event within {timeout} s")

    def until(self, kind: str, test=lambda data: True, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got, data = self.next(max(deadline - time.monotonic(), 0.01))
            if got == kind and test(data):
                return data

    def close(self) -> None:
        self.response.close()


def test_a_stream_starts_with_the_overview_then_sends_each_change_and_the_counts(app, store):
    store.create_job("waiting", "31452104", tags=["team-a"])
    store.create_job("working", "25719670")
    store.update("working", status="running", current_step="generate-script", progress_percent=30)
    store.create_job("done", "24906146")
    store.update("done", status="completed")
    stream = Stream(app)
    try:
        kind, first = stream.next()
        assert kind == "overview"
        assert first["counts"] == {"pending": 1, "running": 1, "completed": 1, "failed": 0, "canceled": 0,
                                   "total": 3}
        assert [j["job_id"] for j in first["active"]] == ["working", "waiting"]  # newest first
        assert [j["job_id"] for j in first["finished"]] == ["done"]
        assert first["pipelines"] == ["video"]

        store.update("working", progress_percent=55)
        job = stream.until("job")
        assert (job["job_id"], job["progress_percent"], job["seq"]) == ("working", 55, 3)
        assert job["tags"] == [] and job["pipeline"] == "video" and "result" not in job
        store.update("waiting", status="running", progress_percent=5)
        job = stream.until("job")
        assert job["job_id"] == "waiting" and job["tags"] == ["team-a"]  # what the event lacks, the board adds
        counts = stream.until("counts")
        assert (counts["pending"], counts["running"]) == (0, 2)
        store.update("working", status="failed", error="no PDF")
        assert stream.until("job")["error"] == "no PDF"
        assert stream.until("counts") == {"pending": 0, "running": 1, "completed": 1, "failed": 1,
                                          "canceled": 0, "total": 3}
        store.create_job("newcomer", "32007143")  # a job the board never saw joins the counts
        assert stream.until("job")["job_id"] == "newcomer"
        assert stream.until("counts")["total"] == 4
        assert app.extensions["progress_events"].client_count == 1
    finally:
        stream.close()
    assert app.extensions["progress_events"].client_count == 0


def test_quiet_spells_get_keep_alive_comments(app, store):
    stream = Stream(app)
    try:
        assert stream.next()[0] == "overview"
        wait_until(lambda: (stream.comments or next(stream.chunks) == b": keep-alive\n\n"), timeout=5,
                   what="a keep-alive comment")
    finally:
        stream.close()


def test_pipeline_and_tag_narrow_the_jobs_and_batches_a_stream_sends_but_not_the_counts(app, store):
    store.create_job("video-a", "31452104", tags=["team-a"])
    store.create_job("audio-a", "25719670", pipeline="audio", tags=["team-a"])
    store.create_job("video-b", "24906146", tags=["team-b"])
    stream = Stream(app, "?pipeline=video&tag=team-a")
    try:
        kind, first = stream.next()
        assert [j["job_id"] for j in first["active"]] == ["video-a"]
        assert first["counts"]["total"] == 3 and first["pipelines"] == ["audio", "video"]
        for job_id in ("audio-a", "video-b", "video-a"):
            store.update(job_id, status="running", progress_percent=10)
        sent = []
        while "video-a" not in sent:
            kind, data = stream.next()
            if kind == "job":
                sent.append(data["job_id"])
        assert sent == ["video-a"]
        assert stream.until("counts")["running"] == 3  # the counts are of every job
    finally:
        stream.close()


def test_a_batch_whose_member_moves_is_sent_again(app, store):
    store.create_batch("june", ["june-1", "june-2"], "video", name="June papers", tags=["team-a"])
    for i, job_id in enumerate(("june-1", "june-2")):
        store.create_job(job_id, f"3145210{i}", batch_id="june", tags=["team-a"])
    stream = Stream(app)
    try:
        first = stream.next()[1]
        assert [(b["batch_id"], b["name"], b["total"]) for b in first["batches"]] == [("june", "June papers", 2)]
        assert "job_ids" not in first["batches"][0]
        store.update("june-1", status="completed")
        batch = stream.until("batch", lambda b: b["completed"] == 1)
        assert (batch["progress_percent"], batch["status"]) == (50, "running")
        store.update("june-2", status="failed", error="gone")
        batch = stream.until("batch", lambda b: b["failed"] == 1)
        assert batch["status"] == "failed" and "job_ids" not in batch
    finally:
        stream.close()


def test_the_counts_are_bounded_by_their_window(app, store, monkeypatch):
    monkeypatch.setattr(live, "COUNT_WINDOW", 3)
    for i in range(5):
        store.create_job(f"job-{i}", f"3145210{i}")
    store.update("job-0", status="running")  # outside the window: not counted
    stream = Stream(app)
    try:
        first = stream.next()[1]
        assert first["counts"]["total"] == 3 and first["counts"]["running"] == 0
        store.create_job("job-5", "31452105")
        counts = stream.until("counts")
        assert counts["total"] == 3 and counts["pending"] == 3  # the newest joined, the oldest left
    finally:
        stream.close()


def test_the_overview_is_the_streams_first_event_as_json(app, store):
    store.create_job("a", "31452104", tags=["team-a"])
    store.create_job("b", "25719670")
    store.update("b", status="canceled")
    client = app.test_client()
    body = client.get("/api/v1/overview").get_json()  # checked against the OpenAPI schema too
    assert body["counts"]["pending"] == 1 and body["counts"]["canceled"] == 1
    assert [j["job_id"] for j in body["active"]] == ["a"] and [j["job_id"] for j in body["finished"]] == ["b"]
    assert client.get("/api/v1/overview?status=canceled").get_json()["active"] == []
    assert client.get("/api/v1/overview?tag=team-a").get_json()["finished"] == []
    assert client.get("/api/v1/overview?limit=1").status_code == 200
    store.create_job("c", "24906146")
    store.update("c", status="completed")  # newer than b: ?status= picks before ?limit= cuts
    newest = lambda: [j["job_id"] for j in client.get("/api/v1/overview?limit=1").get_json()["finished"]]  # noqa: E731
    assert wait_until(lambda: newest() == ["c"], what="the board to learn of c from its event")
    assert [j["job_id"] for j in client.get("/api/v1/overview?status=canceled&limit=1").get_json()["finished"]] == ["b"]


@pytest.mark.parametrize(("query", "named"), [
    ("?status=lost", "status must be one of"),
    ("?pipeline=bad%20id", "pipeline"),
    ("?tag=-x", "tag"),
    ("?limit=0", "limit must be an integer from 1 to 200"),
    ("?limit=two", "limit must be"),
    ("?paper_id=1", "unknown query parameter 'paper_id'"),
])
def test_a_bad_filter_is_a_400_that_names_it(app, query, named):
    for path in ("/api/v1/events", "/api/v1/overview", "/"):
        r = app.test_client().get(path + query)
        text = html.unescape(r.get_data(as_text=True))  # the page's error is HTML
        assert r.status_code == 400 and named in text, (path, text)
    assert app.extensions["progress_events"].client_count == 0


# -- under gunicorn ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(real_redis_url, module_key_prefix):
    # a stream learns that its client left when it next writes: a keep-alive every second
    srv = GunicornServer(server_env(real_redis_url, module_key_prefix, PROGRESS_WEB_SSE_KEEPALIVE="1"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def module_store(real_redis_url, module_key_prefix):
    import redis

    client = redis.Redis.from_url(real_redis_url, decode_responses=True)
    yield ProgressStore(client, Settings.from_env(server_env(real_redis_url, module_key_prefix)))
    client.close()


def read_event(response) -> tuple[str, dict]:
    fields: dict[str, str] = {}
    while True:
        line = response.readline().decode().rstrip("\n")
        if not line:
            if "data" in fields:
                return fields.get("event", "message"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_twenty_dashboards_share_the_processs_one_redis_connection(server, module_store, real_redis,
                                                                   module_key_prefix):
    module_store.create_job("shared", "31452104")
    host, port = server.base.removeprefix("http://").split(":")
    conns = []
    try:
        for _ in range(20):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/api/v1/events", headers={"Accept": "text/event-stream"})
            conns.append((conn, conn.getresponse()))
        assert all(read_event(r)[0] == "overview" for _, r in conns)
        assert server.metric("progress_sse_clients") == 20
        connections = web_connections(real_redis, module_key_prefix)
        listeners = [c for c in connections if c["name"].endswith(".events")]
        assert len(listeners) == 1 and int(listeners[0]["sub"]) == 1, connections  # one pub/sub for all
        assert len(connections) <= 4, connections

        module_store.update("shared", status="running", progress_percent=42)
        for _, response in conns:
            kind, data = read_event(response)
            assert kind == "job" and (data["job_id"], data["progress_percent"]) == ("shared", 42)
    finally:
        for conn, _ in conns:
            conn.close()
    wait_until(lambda: server.metric("progress_sse_clients") == 0, what="the dashboards to be counted closed")


def test_after_the_listener_loses_redis_a_dashboard_starts_afresh_with_what_it_missed(
        real_redis_url, module_store, module_key_prefix, tmp_path):
    proxy = TcpProxy(real_redis_url)
    proxy.up()
    srv = GunicornServer(server_env(proxy.url, module_key_prefix), log_path=tmp_path / "gunicorn.log")
    conn = None
    try:
        module_store.create_job("outage", "31452104")
        host, port = srv.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        conn.request("GET", "/api/v1/events", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        kind, first = read_event(response)
        assert kind == "overview" and "outage" in [j["job_id"] for j in first["active"]]

        proxy.down()  # the web process loses Redis: pub/sub and pool alike
        module_store.update("outage", status="running", progress_percent=70)  # an event nobody there gets
        proxy.up()
        while True:  # a fresh overview, with the change it missed
            kind, data = read_event(response)
            if kind == "overview":
                (job,) = [j for j in data["active"] if j["job_id"] == "outage"]
                assert (job["status"], job["progress_percent"]) == ("running", 70)
                assert data["counts"]["running"] >= 1
                break
        module_store.update("outage", progress_percent=80)  # and it goes on live
        kind, data = read_event(response)
        while kind != "job":
            kind, data = read_event(response)
        assert (data["job_id"], data["progress_percent"]) == ("outage", 80)
    finally:
        if conn is not None:
            conn.close()
        srv.stop()
        proxy.down()
