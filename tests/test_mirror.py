"""Finished jobs -> PostgreSQL (progress_service.mirror) and the schema migrations.

On the real PostgreSQL, each test in a schema of its own (dropped afterwards):
the server is shared, and the production table is ``progress_jobs``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import psycopg
import pytest
from helpers import wait_until
from tcp_proxy import TcpProxy

from progress_service import BackendUnavailable, ProgressStore, migrations
from progress_service.mirror import UPSERT, Mirror, SchemaMissing, job_row
from progress_service.models import DEFAULT_STEPS

STEPS = list(DEFAULT_STEPS)


@pytest.fixture
def mirror(store, db_url):
    with Mirror(store, db_url, retry_base=0.1, retry_max=0.4) as m:
        yield m


def rows(db_url, where="true"):
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(f"SELECT * FROM progress_jobs WHERE {where} ORDER BY job_id")
        names = [c.name for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def due(store):
    return {(k.decode() if isinstance(k, bytes) else k): s
            for k, s in store.client.zrange(store.keys.mirror_due, 0, -1, withscores=True)}


def finish(store, job_id, status="completed", paper_id="31452104"):
    """A job that runs two steps and ends in ``status``."""
    store.create_job(job_id, paper_id, steps=STEPS)
    store.update(job_id, status="running", current_step="fetch-paper", progress_percent=5)
    store.update(job_id, current_step="generate-script", progress_percent=30, message="writing")
    if status == "completed":
        r = store.update(job_id, progress_percent=100, result={"video_url": f"file:///{job_id}.mp4"})
    elif status == "failed":
        r = store.update(job_id, status="failed", error="ffmpeg exited with 1")
    else:
        r = store.update(job_id, status="canceled", message="canceled by the user")
    assert r.accepted and r.status == status
    return store.get(job_id)


# -- migrations ---------------------------------------------------------------


def test_db_upgrade_creates_every_snapshot_column_and_twice_is_harmless(empty_db_url):
    first = migrations.upgrade(empty_db_url)
    assert [m.version for m in first] == [m.version for m in migrations.available()]
    assert migrations.upgrade(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        columns = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'progress_jobs' AND table_schema = current_schema()").fetchall())
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'progress_jobs'::regclass"
            " AND i.indisprimary").fetchall()
    assert [v for (v,) in versions] == [m.version for m in migrations.available()]
    assert pk == [("job_id",)]
    snapshot_fields = {
        "job_id", "paper_id", "pipeline", "status", "progress_percent", "current_step", "steps",
        "completed_steps", "total_steps", "message", "error", "result", "seq", "created_at",
        "started_at", "progress_updated_at", "finished_at", "heartbeat_at", "batch_id", "tags",
        "attempt", "retry_of",
    }
    assert set(columns) == snapshot_fields | {"history", "mirrored_at"}
    for name in ("steps", "completed_steps", "result", "history"):
        assert columns[name] == "jsonb"
    for name in ("created_at", "started_at", "progress_updated_at", "finished_at", "heartbeat_at",
                 "mirrored_at"):
        assert columns[name] == "timestamp with time zone"


def test_concurrent_db_upgrades_apply_each_migration_once(empty_db_url):
    results, errors = [], []

    def run():
        try:
            results.append([m.version for m in migrations.upgrade(empty_db_url)])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == [[], [], [], [m.version for m in migrations.available()]]


def test_without_the_schema_the_mirror_says_run_db_upgrade_and_loses_nothing(store, empty_db_url):
    finish(store, "job-1")
    with Mirror(store, empty_db_url, retry_base=0.1) as m:
        with pytest.raises(SchemaMissing, match="run progress-service db upgrade"):
            m.sweep()
        assert "job-1" in due(store)  # re-scored for later, not dropped
        with pytest.raises(SchemaMissing, match="run progress-service db upgrade"):
            m.fetch("job-1")
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('progress_jobs')").fetchone() == (None,)


# -- mirroring ----------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "canceled"])
def test_a_finished_job_lands_once_with_its_fields_and_history(store, mirror, db_url, status):
    snap = finish(store, "job-1", status)
    history = store.history("job-1")
    finish(store, "other", "completed")
    store.create_job("still-running", "31452104", steps=STEPS)
    store.update("still-running", status="running", progress_percent=10)

    assert set(due(store)) == {"job-1", "other"}
    assert mirror.sweep() == 2
    assert due(store) == {}
    assert mirror.sweep() == 0

    (row,) = rows(db_url, "job_id = 'job-1'")
    assert row["status"] == status
    assert row["seq"] == snap["seq"] and row["seq"] == history[-1]["seq"]
    assert row["steps"] == STEPS and row["total_steps"] == 5
    assert row["completed_steps"] == snap["completed_steps"]
    assert row["history"] == history and len(history) == 4
    assert row["mirrored_at"] is not None
    if status == "completed":
        assert row["progress_percent"] == 100 and row["current_step"] is None
        assert row["result"] == {"video_url": "file:///job-1.mp4"}
        assert row["completed_steps"] == STEPS
    elif status == "failed":
        assert row["error"] == "ffmpeg exited with 1" and row["result"] is None
        assert row["progress_percent"] == 30 and row["current_step"] == "generate-script"
    else:
        assert row["message"] == "canceled by the user"

    fetched = mirror.fetch("job-1")
    assert fetched.pop("history") == history
    assert fetched.pop("mirrored_at").endswith("Z")
    assert fetched == {**snap, "is_stale": False, "eta_seconds": None}
    assert mirror.history("job-1") == history
    assert mirror.fetch("still-running") is None and mirror.fetch("nope") is None
    assert [r["job_id"] for r in rows(db_url)] == ["job-1", "other"]


def test_a_replay_with_a_lower_seq_never_overwrites_a_newer_row(store, mirror, db_url):
    old = finish(store, "job-1", "failed")
    old_history = store.history("job-1")
    assert mirror.mirror_job("job-1") is True
    # Recovery: forced back to life, then completed: a higher seq.
    assert store.update("job-1", status="running", force=True).accepted
    assert store.update("job-1", progress_percent=100).status == "completed"
    new = store.get("job-1")
    assert mirror.sweep() == 1
    assert rows(db_url)[0]["seq"] == new["seq"] > old["seq"]

    # A late replay of the old state (a slow sweeper, a backfill) changes nothing.
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(UPSERT, job_row(old, old_history))
        assert cur.rowcount == 0
    (row,) = rows(db_url)
    assert row["seq"] == new["seq"] and row["status"] == "completed" and row["progress_percent"] == 100
    assert mirror.mirror_job("job-1") is True  # same seq again: harmless
    assert rows(db_url)[0]["mirrored_at"] == row["mirrored_at"]


def test_the_sweep_goes_in_batches_and_lands_every_job(store, db_url):
    for i in range(23):
        finish(store, f"job-{i:02d}", ("completed", "failed", "canceled")[i % 3])
    with Mirror(store, db_url, batch_size=5) as m:
        assert m.sweep(limit=12) == 12  # at most the limit
        assert len(due(store)) == 11
        assert m.sweep(limit=None) == 11
    assert len(rows(db_url)) == 23 and due(store) == {}


def test_sweepers_in_several_workers_share_the_jobs_and_a_dead_ones_claim_expires(store, db_url):
    for i in range(60):
        finish(store, f"job-{i:02d}")
    sweepers = [Mirror(store, db_url, batch_size=7) for _ in range(3)]
    totals = [0, 0, 0]

    def sweep(i):
        totals[i] = sweepers[i].sweep(limit=None)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(totals) == 60  # every job written once: no sweeper copied another's claim
    assert len(rows(db_url)) == 60 and due(store) == {}

    # A sweeper that claims a batch and dies before writing it loses nothing.
    for i in range(5):
        finish(store, f"late-{i}")
    now = store.server_time_ms()
    claimed = store.claim_mirror_due(now, 100, 300)  # what sweepers[0] would claim
    assert len(claimed) == 5
    assert sweepers[1].sweep() == 0  # claimed: not due for anyone else yet
    assert wait_until(lambda: sweepers[1].sweep() == 5, timeout=5)
    assert len(rows(db_url)) == 65
    for m in sweepers:
        m.close()


def test_a_row_postgres_refuses_does_not_hold_back_its_batch(store, mirror, db_url):
    finish(store, "good", "completed")
    store.create_job("nul", "31452104", steps=STEPS)
    store.update("nul", status="failed", error="bad byte \x00 in the output")
    assert mirror.sweep() == 2
    assert rows(db_url, "job_id = 'nul'")[0]["error"] == "bad byte \ufffd in the output"


def test_backfill_copies_finished_jobs_whose_due_entry_was_lost(store, mirror, db_url):
    for i in range(7):
        finish(store, f"job-{i}")
    store.create_job("pending-one", "31452104", steps=STEPS)
    store.client.delete(store.keys.mirror_due)  # the writer died before its ZADD
    assert mirror.sweep() == 0
    assert mirror.backfill() == 7
    assert mirror.backfill() == 0
    assert sorted(r["job_id"] for r in rows(db_url)) == [f"job-{i}" for i in range(7)]


def test_list_jobs_reads_finished_jobs_newest_first(store, mirror):
    for i, status in enumerate(["completed", "failed", "canceled", "completed"]):
        finish(store, f"job-{i}", status, paper_id="31452104" if i % 2 else "34265844")
    mirror.sweep()
    assert [s["job_id"] for s in mirror.list_jobs()] == ["job-3", "job-2", "job-1", "job-0"]
    assert [s["job_id"] for s in mirror.list_jobs(paper_id="31452104")] == ["job-3", "job-1"]
    assert [s["job_id"] for s in mirror.list_jobs(status="completed", limit=1)] == ["job-3"]
    assert mirror.count() == 4


# -- PostgreSQL down, then back ---------------------------------------------------


def test_jobs_finished_while_postgres_is_down_land_when_it_returns(store, db_url, caplog):
    caplog.set_level(logging.INFO, logger="progress_service.mirror")
    proxy = TcpProxy(db_url)
    proxy.up()
    stop = threading.Event()
    m = Mirror(store, proxy.url, retry_base=0.1, retry_max=0.8, connect_timeout=2)
    loop = threading.Thread(target=m.run_forever, args=(stop, 0.05), daemon=True)
    loop.start()
    try:
        finish(store, "before-0")
        assert wait_until(lambda: len(rows(db_url)) == 1)

        proxy.down()  # PostgreSQL "crashes" with the mirror's connection open
        for i in range(30):
            finish(store, f"during-{i:02d}", ("completed", "failed", "canceled")[i % 3])
        assert wait_until(lambda: m.postgres_ok is False)
        time.sleep(0.5)  # several sweeps fail meanwhile
        assert len(rows(db_url)) == 1
        assert len(due(store)) == 30  # waiting in Redis, re-scored with back-off
        assert max(due(store).values()) > store.server_time_ms()

        proxy.up()
        assert wait_until(lambda: len(rows(db_url)) == 31 and not due(store), timeout=15)
        finish(store, "after-0")
        assert wait_until(lambda: len(rows(db_url)) == 32)
    finally:
        stop.set()
        loop.join(10)
        proxy.down()
    assert not loop.is_alive()
    expected = {"before-0", "after-0"} | {f"during-{i:02d}" for i in range(30)}
    assert {r["job_id"] for r in rows(db_url)} == expected
    for row in rows(db_url):
        assert row["seq"] == store.get(row["job_id"])["seq"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("PostgreSQL is unavailable" in msg for msg in messages) == 1
    assert sum("PostgreSQL is back" in msg for msg in messages) == 1


def test_a_write_into_a_partition_times_out_and_the_job_waits_for_the_next_try(store, db_url):
    proxy = TcpProxy(db_url)
    proxy.up()
    try:
        with Mirror(store, proxy.url, timeout=2, retry_base=0.1, retry_max=0.2, recheck_after=0.5) as m:
            assert m.count() == 0  # a connection is open: the partition hangs it, not refuses it
            proxy.blackhole()
            finish(store, "in-the-partition")
            start = time.monotonic()
            with pytest.raises(BackendUnavailable, match="no answer within 2s"):
                m.sweep()
            assert time.monotonic() - start < 3  # bounded by the timeout, not by the network
            with pytest.raises(BackendUnavailable, match="next try in"):
                m.fetch("in-the-partition")  # meanwhile, callers are told at once
            assert "in-the-partition" in due(store)
            assert ttls(store, "in-the-partition") == {-1}  # a hanging try expires nothing

            proxy.heal()
            store.client.zadd(store.keys.mirror_due, {"in-the-partition": 0})
            assert wait_until(lambda: _sweeps(m), timeout=10)
        assert [r["job_id"] for r in rows(db_url)] == ["in-the-partition"]
    finally:
        proxy.down()


def _sweeps(m: Mirror) -> int:
    try:
        return m.sweep()
    except BackendUnavailable:
        return 0


def ttls(store, job_id):
    return {store.client.ttl(store.keys.job(job_id)), store.client.ttl(store.keys.history(job_id))}


def test_a_finished_job_does_not_expire_until_its_row_lands(store, db_url):
    """PostgreSQL down (or no mirror running) for longer than PROGRESS_JOB_TTL must not lose
    the job: it has no TTL until its row is in PostgreSQL, then the rest of its TTL."""
    short = ProgressStore(store.client, dataclasses.replace(store.settings, job_ttl=30))
    finish(short, "short-lived")
    assert ttls(store, "short-lived") == {-1}  # no TTL while it waits for the mirror
    down = Mirror(store, "postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=1)
    with pytest.raises(BackendUnavailable):
        down.sweep()
    assert ttls(store, "short-lived") == {-1}
    assert "short-lived" in due(store)

    up = Mirror(store, db_url)
    store.client.zadd(store.keys.mirror_due, {"short-lived": 0})  # due now, not after the back-off
    assert up.sweep() == 1
    assert [r["job_id"] for r in rows(db_url)] == ["short-lived"]
    assert all(25 <= ttl <= 30 for ttl in ttls(store, "short-lived"))  # 30 s after it finished

    # One that landed later than its TTL ran leaves Redis at once: PostgreSQL has it.
    finish(short, "landed-late")
    store.client.hset(store.keys.job("landed-late"), "expires_at_ms", store.server_time_ms() - 1)
    assert up.sweep() == 1
    assert store.get("landed-late") is None and up.fetch("landed-late")["status"] == "completed"


def test_a_forced_change_after_landing_waits_for_the_mirror_again(store, mirror, db_url):
    finish(store, "revived")
    mirror.sweep()
    assert all(ttl > 0 for ttl in ttls(store, "revived"))
    store.update("revived", status="failed", error="re-checked: the video is broken", force=True)
    assert ttls(store, "revived") == {-1} and "revived" in due(store)
    mirror.sweep()
    assert rows(db_url)[0]["status"] == "failed" and all(ttl > 0 for ttl in ttls(store, "revived"))


def test_the_loop_sweeps_once_more_when_told_to_stop(store, db_url):
    finish(store, "last-job")
    stop = threading.Event()
    stop.set()  # a burst worker that is done at once
    Mirror(store, db_url).run_forever(stop, interval=5)
    assert [r["job_id"] for r in rows(db_url)] == ["last-job"]


# -- Redis Cluster (PROGRESS_REDIS_CLUSTER=1) ---------------------------------------------


def test_the_mirror_works_with_the_store_on_a_redis_cluster(cluster_store, db_url):
    store = cluster_store
    for i in range(12):
        finish(store, f"job-{i:02d}", ("completed", "failed", "canceled")[i % 3])
    with Mirror(store, db_url, batch_size=5) as m:
        assert m.sweep(limit=None) == 12
        store.client.delete(store.keys.mirror_due)
        finish(store, "lost-entry")
        store.client.delete(store.keys.mirror_due)
        assert m.backfill() == 1  # the SCAN covers every node
        assert m.fetch("job-04")["history"] == store.history("job-04")
    assert len(rows(db_url)) == 13
