"""Batches: the store's consistent snapshot, the API's all-or-nothing submit, cancel and tags,
and the race of many writers against a reader on fakeredis, Redis and a Redis Cluster."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from helpers import CLOSED_DATABASE_URL, CLOSED_REDIS_URL, cli_env, wait_until
from openapi_check import OpenApiClient

from progress_service import ProgressStore, Settings
from progress_service.batches import COUNTED
from progress_service.store import connect
from web import create_app

STATES = ("completed", "failed", "canceled")
ROOT = Path(__file__).resolve().parent.parent


def make_batch(store: ProgressStore, batch_id: str, n: int, tags=("team-a",)) -> list[str]:
    job_ids = [f"{batch_id}-m{i}" for i in range(n)]
    store.create_batch(batch_id, job_ids, "video", name="a list", tags=tags)
    for i, job_id in enumerate(job_ids):
        store.create_job(job_id, f"p{i}", batch_id=batch_id, tags=tags)
    return job_ids


def counts_of(snap) -> dict[str, int]:
    return {name: snap[name] for name in COUNTED}


# -- the store ------------------------------------------------------------------


def test_a_batch_snapshot_counts_its_members(store):
    ids = make_batch(store, "b1", 4)
    snap = store.get_batch("b1")
    assert snap["job_ids"] == ids and snap["total"] == 4 and snap["pending"] == 4
    assert (snap["status"], snap["progress_percent"], snap["name"], snap["tags"]) == \
        ("pending", 0, "a list", ["team-a"])
    assert store.get(ids[0])["batch_id"] == "b1" and store.get(ids[0])["tags"] == ["team-a"]

    store.update(ids[0], progress_percent=40)
    store.update(ids[1], status="completed")
    snap = store.get_batch("b1")
    assert counts_of(snap) == {"pending": 2, "running": 1, "completed": 1, "failed": 0, "canceled": 0}
    assert (snap["status"], snap["progress_percent"], snap["finished_at"]) == ("running", 35, None)

    store.update(ids[0], status="failed", error="boom")
    store.update(ids[2], status="completed")
    store.update(ids[3], status="completed")
    snap = store.get_batch("b1")
    assert (snap["status"], snap["failed"], snap["completed"], snap["progress_percent"]) == \
        ("failed", 1, 3, 85)
    assert snap["finished_at"] == max(store.get(j)["finished_at"] for j in ids)
    assert 0 < store.client.ttl(store.keys.batch("b1")) <= store.settings.job_ttl
    assert store.get_batch("nope") is None


def test_the_batch_percent_never_falls_even_when_a_member_is_forced_back(store):
    ids = make_batch(store, "b2", 2)
    store.update(ids[0], progress_percent=80)
    assert store.get_batch("b2")["progress_percent"] == 40
    assert store.update(ids[0], progress_percent=10, force=True).accepted
    assert store.get_batch("b2")["progress_percent"] == 40  # the high-water mark holds


def test_list_jobs_by_tag_and_batch(store):
    ids = make_batch(store, "b3", 3, tags=("team-a", "x1"))
    store.create_job("lone", "p9", tags=["team-b"])
    assert [s["job_id"] for s in store.list_jobs(batch_id="b3")] == ids[::-1]
    assert {s["job_id"] for s in store.list_jobs(tag="x1")} == set(ids)
    assert [s["job_id"] for s in store.list_jobs(tag="team-b")] == ["lone"]
    assert store.list_jobs(tag="x1", batch_id="b3", limit=1)[0]["job_id"] == ids[-1]


def test_bad_tags_are_refused(store):
    from progress_service.errors import InvalidInput

    with pytest.raises(InvalidInput, match="tag"):
        store.create_job("j1", "p1", tags=["bad tag"])
    with pytest.raises(InvalidInput, match="at most 16"):
        store.create_job("j1", "p1", tags=[f"t{i}" for i in range(17)])
    assert store.get("j1") is None


# -- the API --------------------------------------------------------------------


@pytest.fixture
def app(settings, real_redis, rq_conn):
    app = create_app(settings)
    app.config["TESTING"] = True
    app.test_client_class = OpenApiClient  # every answer checked against the OpenAPI document
    yield app
    app.extensions["progress_events"].close()
    app.extensions["progress_rq"].close() if "progress_rq" in app.extensions else None


@pytest.fixture
def client(app):
    return app.test_client()


def queued(rq_conn, settings) -> int:
    return rq_conn.llen(f"rq:queue:{settings.queue_name}")


def test_submit_a_batch_then_read_list_and_cancel_it(client, app, rq_conn, settings):
    r = client.post("/api/v1/batches", json={"paper_ids": ["34265844", "31452104", "34265844"],
                                             "tags": ["team-a"], "name": "june"})
    assert r.status_code == 202, r.get_data(as_text=True)
    body = r.get_json()
    batch_id, job_ids = body["batch_id"], body["job_ids"]
    assert len(job_ids) == 3 and len(set(job_ids)) == 3
    assert body["status_url"] == f"/api/v1/batches/{batch_id}"
    assert body["events_url"] == f"/api/v1/batches/{batch_id}/events"
    assert body["page_url"] == f"/batches/{batch_id}/"
    assert queued(rq_conn, settings) == 3

    snap = client.get(body["status_url"]).get_json()
    assert (snap["total"], snap["pending"], snap["status"], snap["name"], snap["tags"]) == \
        (3, 3, "pending", "june", ["team-a"])
    assert snap["job_ids"] == job_ids
    member = client.get(f"/api/v1/jobs/{job_ids[1]}").get_json()
    assert (member["batch_id"], member["tags"], member["paper_id"]) == (batch_id, ["team-a"], "31452104")
    listed = client.get(f"/api/v1/jobs?batch_id={batch_id}").get_json()["jobs"]
    assert [j["job_id"] for j in listed] == job_ids[::-1]
    assert len(client.get("/api/v1/jobs?tag=team-a").get_json()["jobs"]) == 3
    assert client.get("/api/v1/jobs?tag=team-b").get_json()["jobs"] == []

    store = app.extensions["progress"]
    store.update(job_ids[0], status="completed")
    r = client.post(f"/api/v1/batches/{batch_id}/cancel")
    assert r.status_code == 202
    assert sorted(r.get_json()["canceled_job_ids"]) == sorted(job_ids[1:])
    snap = client.get(body["status_url"]).get_json()
    assert (snap["status"], snap["completed"], snap["canceled"]) == ("canceled", 1, 2)
    # canceled in RQ too, no worker takes them: only the member completed here (no worker) waits
    assert rq_conn.lrange(f"rq:queue:{settings.queue_name}", 0, -1) == [job_ids[0].encode()]


@pytest.mark.parametrize("body", [
    {"paper_ids": ["34265844", "bad id", "31452104"]},
    {"paper_ids": []},
    {"paper_ids": [f"p{i}" for i in range(1001)]},
    {"paper_ids": ["34265844"], "pipeline": "no-such-pipeline"},
    {"paper_ids": ["34265844"], "tags": ["ok", "not ok"]},
    {"paper_ids": "34265844"},
])
def test_a_bad_batch_is_a_400_and_creates_nothing(client, app, rq_conn, settings, body):
    r = client.post("/api/v1/batches", json=body)
    assert r.status_code == 400, r.get_data(as_text=True)
    store = app.extensions["progress"]
    assert store.client.zcard(store.keys.jobs_index) == 0
    assert store.client.zcard(store.keys.batches_index) == 0
    assert queued(rq_conn, settings) == 0


def test_an_unknown_batch_is_a_404(settings, real_redis, rq_conn, db_url):
    app = create_app(dataclasses.replace(settings, database_url=db_url))
    client = app.test_client()
    assert client.get("/api/v1/batches/nope").status_code == 404
    assert client.post("/api/v1/batches/nope/cancel").status_code == 404
    assert client.get("/api/v1/batches/bad%20id").status_code == 400
    app.extensions["progress_mirror"].close()
    app.extensions["progress_events"].close()


def test_a_finished_batch_is_served_from_postgres_once_redis_expired_it(settings, real_redis, rq_conn,
                                                                       db_url):
    app = create_app(dataclasses.replace(settings, database_url=db_url))
    client = app.test_client()
    try:
        body = client.post("/api/v1/batches", json={"paper_ids": ["34265844", "31452104"]}).get_json()
        store = app.extensions["progress"]
        store.update(body["job_ids"][0], progress_percent=30)
        store.update(body["job_ids"][0], status="failed", error="boom")
        store.update(body["job_ids"][1], status="completed")
        live = client.get(body["status_url"]).get_json()
        assert live["status"] == "failed"
        mirror = app.extensions["progress_mirror"]
        for job_id in body["job_ids"]:
            assert mirror.mirror_job(job_id)
        store.client.delete(store.keys.batch(body["batch_id"]),
                            *(store.keys.job(j) for j in body["job_ids"]))
        kept = client.get(body["status_url"]).get_json()
        assert kept == live
        listed = client.get(f"/api/v1/jobs?batch_id={body['batch_id']}").get_json()["jobs"]
        assert {j["job_id"] for j in listed} == set(body["job_ids"])
    finally:
        if app.extensions.get("progress_mirror") is not None:
            app.extensions["progress_mirror"].close()
        app.extensions["progress_events"].close()


# -- the race: 8 processes, 200 members, one reader ---------------------------------


def race_writer(url: str, cluster: bool, prefix: str, job_ids: list[str], mine: list[str], seed: int) -> None:
    """Update random members of the batch, then finish the ones that are this process's."""
    settings = Settings.from_env({"PROGRESS_REDIS_URL": url, "REDIS_URL": url if not cluster else
                                  "redis://127.0.0.1:1/0", "PROGRESS_REDIS_CLUSTER": "1" if cluster else "0",
                                  "PROGRESS_KEY_PREFIX": prefix})
    store = ProgressStore(connect(settings), settings)
    rng = random.Random(seed)
    for _ in range(150):
        job_id = rng.choice(job_ids)
        store.update(job_id, progress_percent=rng.randint(0, 99))  # a lower one is a regression
    for job_id in mine:
        if rng.random() < 0.5:
            store.update(job_id, progress_percent=rng.randint(0, 99))
        store.update(job_id, status=rng.choice(STATES), error="x")


def run_race(store: ProgressStore, url: str, cluster: bool) -> None:
    """8 writer processes against two readers: one follows the batch's event stream (a web app on
    the same store), one reads the snapshot over and over; then both are checked."""
    job_ids = make_batch(store, "race", 200)
    settings = dataclasses.replace(store.settings, redis_url=CLOSED_REDIS_URL if cluster else url,
                                   database_url=CLOSED_DATABASE_URL)
    app = create_app(settings)
    shown: list[dict] = []
    streamed: list = []
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while True:
                snap = store.get_batch("race")
                shown.append(snap)
                if snap["status"] in STATES:
                    return
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def follow() -> None:
        try:
            streamed.extend(read_events(app.test_client().get("/api/v1/batches/race/events", buffered=False)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    readers = [threading.Thread(target=poll), threading.Thread(target=follow)]
    try:
        for r in readers:
            r.start()
        ctx = multiprocessing.get_context("spawn")
        writers = [ctx.Process(target=race_writer, args=(url, cluster, store.keys.prefix, job_ids,
                                                         job_ids[i::8], i)) for i in range(8)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(120)
            assert w.exitcode == 0
        for r in readers:
            r.join(30)
            assert not r.is_alive(), "a reader did not see the batch finish"
    finally:
        app.extensions["progress_events"].close()
        for r in readers:
            r.join(5)
    assert not errors, errors
    batches = [data for _, kind, data in streamed if kind == "batch"]
    assert len(shown) > 2 and len(batches) > 2
    assert len([e for e in streamed if e[1] == "progress"]) > 200
    for seen in (shown, batches):
        last = 0.0
        for snap in seen:
            assert sum(counts_of(snap).values()) == snap["total"] == 200
            assert snap["progress_percent"] >= last
            last = snap["progress_percent"]
    final = store.get_batch("race")
    members = [store.get(j) for j in job_ids]
    assert counts_of(final) == {**dict.fromkeys(COUNTED, 0), **Counter(m["status"] for m in members)}
    assert counts_of(batches[-1]) == counts_of(final) == counts_of(shown[-1])
    mean = round(sum(m["progress_percent"] for m in members) / 200, 6)
    assert final["progress_percent"] == pytest.approx(mean) == batches[-1]["progress_percent"]
    assert final["status"] == batches[-1]["status"] == (
        "failed" if final["failed"] else "canceled" if final["canceled"] else "completed")
    assert final["finished_at"] == batches[-1]["finished_at"] == max(m["finished_at"] for m in members)
    latest = {}
    for _, kind, data in streamed:
        if kind == "progress":
            latest[data["job_id"]] = data
    assert {j: (latest[j]["status"], latest[j]["progress_percent"]) for j in job_ids} == \
        {m["job_id"]: (m["status"], m["progress_percent"]) for m in members}


def test_race_on_fakeredis(key_prefix):
    import fakeredis

    server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"redis://127.0.0.1:{server.server_address[1]}/0"
        settings = Settings.from_env({"PROGRESS_REDIS_URL": url, "PROGRESS_KEY_PREFIX": key_prefix})
        store = ProgressStore(connect(settings), settings)
        run_race(store, url, cluster=False)
        store.client.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.backend
def test_race_on_redis(connected_store, real_redis_url):
    run_race(connected_store, real_redis_url, cluster=False)


@pytest.mark.backend
def test_race_on_a_cluster(redis_cluster, key_prefix):
    settings = Settings.from_env({"PROGRESS_REDIS_URL": redis_cluster.url, "PROGRESS_REDIS_CLUSTER": "1",
                                  "PROGRESS_KEY_PREFIX": key_prefix})
    store = ProgressStore(connect(settings), settings)
    try:
        nodes = {store.client.nodes_manager.get_node_from_slot(store.client.keyslot(store.keys.job(f"race-m{i}"))).name
                 for i in range(20)}
        assert len(nodes) >= 2
        run_race(store, redis_cluster.url, cluster=True)
    finally:
        store.client.close()


# -- the batch's event stream ----------------------------------------------------


def read_events(response, limit: int | None = None, out: list | None = None) -> list[tuple[int, str, dict]]:
    """Parse an SSE body frame by frame (each chunk the stream yields is whole frames), into ``out``
    as they come."""
    out = [] if out is None else out
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
            if "data" in fields:
                out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def drive_members(store: ProgressStore, job_ids: list[str], seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(120):
        store.update(rng.choice(job_ids), progress_percent=rng.randint(1, 99))
    for job_id in job_ids:
        store.update(job_id, status=rng.choice(STATES), error="x")


def test_a_resumed_batch_stream_sees_exactly_the_events_of_an_unbroken_one(app, client):
    store = app.extensions["progress"]
    job_ids = make_batch(store, "flow", 20)
    url = "/api/v1/batches/flow/events"
    whole = client.get(url, buffered=False)
    broken = client.get(url, buffered=False)
    first_whole, first_broken = read_events(whole, 1), read_events(broken, 1)
    assert first_whole[0][1] == first_broken[0][1] == "batch"
    assert first_whole[0][2] == first_broken[0][2]  # all 20 pending, before any change
    unbroken: list = []
    reader = threading.Thread(target=lambda: unbroken.extend(read_events(whole)))
    reader.start()
    writer = threading.Thread(target=drive_members, args=(store, job_ids, 7))
    writer.start()

    rng = random.Random(11)
    resumed: list = []
    response, drops = broken, 0
    while True:
        got = read_events(response, rng.randint(1, 15))
        response.close()
        resumed.extend(got)
        last = (resumed or first_broken)[-1][0]
        response = client.get(url, headers={"Last-Event-ID": str(last)}, buffered=False)
        if response.status_code == 204:
            break
        assert response.status_code == 200
        drops += 1
    writer.join(30)
    reader.join(30)
    assert not reader.is_alive()
    assert drops >= 3
    assert resumed == unbroken
    ids = [e[0] for e in unbroken]
    assert ids == sorted(set(ids)), "ids increase"
    final = unbroken[-1]
    assert final[1] == "batch" and final[2]["status"] in STATES
    assert {e[2]["job_id"] for e in unbroken if e[1] == "progress"} == set(job_ids)
    live = store.get_batch("flow")
    assert counts_of(final[2]) == counts_of(live)
    assert final[2]["progress_percent"] == live["progress_percent"]
    last_percent = 0
    for _, kind, data in unbroken:
        if kind == "batch":
            assert sum(counts_of(data).values()) == 20
            assert data["progress_percent"] >= last_percent
            last_percent = data["progress_percent"]


# -- the command line ----------------------------------------------------------------


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "progress_cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("ending, code", [("completed", 0), ("failed", 1), ("canceled", 2)])
def test_submit_several_papers_makes_a_batch_and_watch_draws_it(connected_store, settings, rq_conn,
                                                               ending, code):
    env = cli_env(settings, PROGRESS_JOB_TTL="300")
    done = cli("submit", "34265844", "31452104", "--tag", "team-a", env=env)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    store = connected_store
    batch = store.get_batch(batch_id)
    assert (batch["total"], batch["pending"], batch["tags"]) == (2, 2, ["team-a"])
    watch = subprocess.Popen([sys.executable, "-m", "progress_cli", "watch", batch_id, "--timeout", "30"],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, second = batch["job_ids"]
    store.update(first, progress_percent=50)
    store.update(first, status="completed")
    store.update(second, status=ending, error="boom" if ending == "failed" else None)
    out, err = watch.communicate(timeout=40)
    assert watch.returncode == code, err
    assert out.startswith(f"{batch_id} {ending}:")
    assert "34265844" in err and "31452104" in err and "total [" in err
    rq_conn.delete(f"rq:queue:{settings.queue_name}")


def test_watch_an_unknown_id_is_66(settings, real_redis):
    done = cli("watch", "nobody-here", env=cli_env(settings))
    assert done.returncode == 66


def test_a_batch_taller_than_the_terminal_ends_in_a_summary():
    from progress_cli.terminal import batch_lines

    ids = [f"j{i}" for i in range(10)]
    members = {j: {"job_id": j, "paper_id": f"p{i}", "status": "running" if i < 7 else "failed",
                   "progress_percent": 10 * i, "steps": [], "current_step": None}
               for i, j in enumerate(ids)}
    batch = {"job_ids": ids, "progress_percent": 45, "status": "running", "eta_seconds": 30,
             "completed": 0, "failed": 3, "canceled": 0, "running": 7, "pending": 0}
    lines = batch_lines(batch, members, rows=6)
    assert len(lines) == 6
    assert [line.split()[0] for line in lines[:4]] == ["p0", "p1", "p2", "p3"]
    assert lines[4] == "... and 6 more: 3 failed, 3 running"
    assert lines[5].startswith("total [#########...........]  45.0%  3 failed, 7 running  ETA 30s")
    assert len(batch_lines(batch, members, rows=40)) == 11


@pytest.mark.backend
def test_the_batch_bench_runs_at_a_tiny_size(real_redis_url):
    bench = ROOT / "bench" / "batch_bench.py"
    done = subprocess.run([sys.executable, str(bench), "--seconds", "0.3", "--members", "20"],
                          env={**os.environ, "REDIS_URL": real_redis_url}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the goal missed on a busy machine
    assert "20-member batch's snapshot" in done.stdout and "update of a batch member" in done.stdout


@pytest.mark.backend
def test_the_batch_log_on_a_cluster_reads_every_node(redis_cluster, key_prefix):
    from progress_service.batches import BATCH_PLACE, ID_STRIDE, BatchFeed

    settings = Settings.from_env({"PROGRESS_REDIS_URL": redis_cluster.url, "PROGRESS_REDIS_CLUSTER": "1",
                                  "PROGRESS_KEY_PREFIX": key_prefix})
    store = ProgressStore(connect(settings), settings)
    try:
        job_ids = make_batch(store, "log", 12)
        upto, histories = store.member_histories(job_ids)
        feed = BatchFeed(store.batch_fields("log"), histories, upto * ID_STRIDE + BATCH_PLACE)
        assert feed.snapshot(upto)["pending"] == 12
        for i, job_id in enumerate(job_ids):
            store.update(job_id, progress_percent=50)
            store.update(job_id, status="failed" if i == 0 else "completed")
        events: list = []

        def caught_up() -> bool:
            upto, histories = store.member_histories(job_ids, feed.cursor // ID_STRIDE)
            events.extend(feed.advance(histories, upto))
            return feed.finished()

        wait_until(caught_up, timeout=5, what="the log reaches every member's end")
        progress = [e for e in events if e[1] == "progress"]
        assert {e[2]["job_id"] for e in progress} == set(job_ids)
        assert events[-1][1] == "batch" and events[-1][2]["status"] == "failed"
        assert counts_of(events[-1][2]) == counts_of(store.get_batch("log"))
        assert [e[0] for e in events] == sorted({e[0] for e in events})
    finally:
        store.client.close()


def test_the_mirror_keeps_a_finished_batch_nobody_read(connected_store, pg_settings, db_url):
    from progress_service.mirror import Mirror

    store = connected_store
    job_ids = make_batch(store, "unread", 3)
    with Mirror(store, db_url) as mirror:
        assert mirror.keep_batches() == 0  # still running: it stays open
        for job_id in job_ids:
            store.update(job_id, status="completed")
        assert mirror.sweep() == 3
        store.client.delete(store.keys.job(job_ids[0]))  # one member already expired
        assert mirror.keep_batches() == 1
        assert store.open_batch_ids() == []
        kept = mirror.fetch_batch("unread")
        assert (kept["status"], kept["completed"], kept["job_ids"]) == ("completed", 3, job_ids)
        assert 0 < store.client.ttl(store.keys.batch("unread")) <= store.settings.job_ttl


def test_following_many_batches_holds_a_few_redis_connections(app, real_redis, settings):
    """20 streams of 20 batches (200 members) in one web process: its one pub/sub connection
    and its pool (PROGRESS_WEB_REDIS_POOL, 3), however many batches are followed."""
    store = app.extensions["progress"]
    batches = [f"many-{i}" for i in range(20)]
    members = {b: make_batch(store, b, 10) for b in batches}
    client = app.test_client()
    streams = [client.get(f"/api/v1/batches/{b}/events", buffered=False) for b in batches]
    got: dict[str, list] = {b: [] for b in batches}
    threads = [threading.Thread(target=read_events, args=(r, None, got[b]))
               for b, r in zip(batches, streams, strict=True)]
    for t in threads:
        t.start()
    for b in batches:
        for job_id in members[b]:
            store.update(job_id, progress_percent=50)
    wait_until(lambda: all(any(e[1] == "progress" for e in got[b]) for b in batches), timeout=15,
               what="every stream sees its members move")
    mine = [c for c in real_redis.client_list()
            if c.get("name", "").startswith(f"{settings.key_prefix}.web.")]
    assert len([c for c in mine if c["name"].endswith(".events")]) == 1, mine
    assert len(mine) <= 1 + settings.web_redis_pool, mine
    for b in batches:
        for job_id in members[b]:
            store.update(job_id, status="completed")
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    assert all(got[b][-1][2]["status"] == "completed" for b in batches)


def test_cancel_a_batch_or_a_job_from_the_command_line(connected_store, settings, rq_conn):
    env = cli_env(settings, PROGRESS_JOB_TTL="300")
    batch_id = cli("submit", "34265844", "25719670", "24906146", env=env).stdout.strip()
    store = connected_store
    first, *rest = store.get_batch(batch_id)["job_ids"]
    store.update(first, status="completed")
    done = cli("cancel", batch_id, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"batch {batch_id} canceled (2 unfinished jobs canceled)"
    batch = store.get_batch(batch_id)
    assert (batch["status"], batch["completed"], batch["canceled"]) == ("canceled", 1, 2)

    job_id = cli("submit", "34265844", env=env).stdout.strip()
    assert cli("cancel", job_id, env=env).returncode == 0
    assert store.get(job_id)["status"] == "canceled"
    again = cli("cancel", job_id, env=env)
    assert again.returncode == 64 and "already finished" in again.stderr
    assert cli("cancel", "nobody-here", env=env).returncode == 66
    rq_conn.delete(f"rq:queue:{settings.queue_name}")
