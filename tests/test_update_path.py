"""The update script's fast path (issue 14): a percent-only update of a running job reads five
fields and builds its event around the job's stored ``event_tail``; every other update takes
the full path and keeps that tail current. Both must publish the same event and write the
same history as before, on fakeredis and on a real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis
from helpers import embedded_redis, subscribed, wait_until

from progress_service import ProgressStore
from progress_service.config import Settings
from progress_service.models import DEFAULT_STEPS, ms_from_iso

STEPS = list(DEFAULT_STEPS)
# the documented event fields, and the snapshot field each must equal (None: the same name)
EVENT_FIELDS = {
    "job_id": None, "paper_id": None, "seq": None, "status": None, "progress_percent": None,
    "current_step": None, "completed_steps": None, "total_steps": None, "message": None,
    "error": None, "result": None, "progress_updated_at_ms": "progress_updated_at",
    "started_at_ms": "started_at", "finished_at_ms": "finished_at",
}


class Events:
    """The job's events as a subscriber of its channel sees them."""

    def __init__(self, store: ProgressStore, job_id: str) -> None:
        self.pubsub = store.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(store.keys.events(job_id))
        wait_until(lambda: subscribed(store.client, store.keys.events(job_id)), what="the subscription")

    def next(self) -> dict:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None:
                return json.loads(message["data"])
        raise AssertionError("no event within 3 s")

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def events(store):
    store.create_job("job-f", "31452104", steps=STEPS)
    feed = Events(store, "job-f")
    yield feed
    feed.close()


def agrees_with_the_snapshot(store: ProgressStore, event: dict) -> None:
    """Every documented field of ``event`` is what the stored job says right after it."""
    snap = store.get(event["job_id"])
    assert snap is not None and set(event) >= set(EVENT_FIELDS)
    for name, snap_name in EVENT_FIELDS.items():
        want = snap[snap_name or name]
        if name.endswith("_ms"):
            want = ms_from_iso(want)
        assert event[name] == want, name


def test_a_percent_only_update_publishes_every_field_the_slow_ones_set(store, events):
    """The fast path's event carries what earlier full updates stored: the step and the steps
    done, the message, the result, the start time, with its own seq, percent and time."""
    store.update("job-f", status="running", current_step="generate-script", message="scripting",
                 result={"draft": "a \"quoted\" é"})
    agrees_with_the_snapshot(store, events.next())
    r = store.update("job-f", progress_percent=31.5)
    assert (r.accepted, r.reason, r.status) == (True, "ok", "running")
    event = events.next()
    assert (event["seq"], event["progress_percent"]) == (r.seq, 31.5)
    assert event["current_step"] == "generate-script" and event["completed_steps"] == ["fetch-paper"]
    assert event["message"] == "scripting" and event["result"] == {"draft": "a \"quoted\" é"}
    agrees_with_the_snapshot(store, event)
    # a new message (a full update), then a percent again: the new message, not the old one
    store.update("job-f", progress_percent=40, message="halfway")
    assert events.next()["message"] == "halfway"
    store.update("job-f", progress_percent=41)
    event = events.next()
    assert event["message"] == "halfway" and event["progress_percent"] == 41
    agrees_with_the_snapshot(store, event)


def test_the_fast_path_keeps_every_rule(store, events):
    store.update("job-f", status="running", progress_percent=50)
    events.next()
    with pytest.raises(Exception, match="INVALID progress_percent must be a number from 0 to 100, got 101"):
        store.scripts.update(keys=[store.keys.job("job-f"), store.keys.history("job-f")],
                             args=[store.keys.events("job-f"), store.keys.all_events, 100, 60, "101"])
    low = store.update("job-f", progress_percent=49.9)
    assert (low.accepted, low.reason, low.seq, low.status) == (False, "regression", 2, "running")
    same = store.update("job-f", progress_percent=50.0000001)  # the same at 6 decimals
    assert (same.accepted, same.reason, same.seq) == (True, "unchanged", 2)
    forced = store.update("job-f", progress_percent=10, force=True)
    assert (forced.reason, forced.seq) == ("ok", 3)
    assert events.next()["progress_percent"] == 10
    done = store.update("job-f", progress_percent=100)  # completing: the full path
    assert (done.reason, done.status) == ("ok", "completed")
    event = events.next()
    assert event["completed_steps"] == STEPS and event["current_step"] is None
    agrees_with_the_snapshot(store, event)
    late = store.update("job-f", progress_percent=100)
    assert (late.accepted, late.reason) == (False, "terminal")


def test_a_finished_job_keeps_no_copy_of_its_event(store, events):
    """The tail is for running jobs: a finished job's hash (kept a week) does not hold its
    result twice; forced back to life, it gets a new tail from its first update."""
    store.update("job-f", status="running", progress_percent=5)
    assert store.client.hexists(store.keys.job("job-f"), "event_tail")
    store.update("job-f", status="completed", result={"video_url": "v" * 500})
    assert not store.client.hexists(store.keys.job("job-f"), "event_tail")
    store.update("job-f", status="running", progress_percent=60, force=True)
    store.update("job-f", progress_percent=61)
    for _ in range(4):  # running, completed, forced back to running, 61
        event = events.next()
    assert (event["status"], event["finished_at_ms"], event["progress_percent"]) == ("running", None, 61)
    agrees_with_the_snapshot(store, event)


def test_a_job_stored_before_the_tail_existed_is_updated_in_full(store, events):
    """A running job written by an older script (no event_tail) takes the full path once,
    which writes the tail; its events are whole either way."""
    store.update("job-f", status="running", current_step="generate-audio", progress_percent=45)
    events.next()
    store.client.hdel(store.keys.job("job-f"), "event_tail")
    store.update("job-f", progress_percent=46)
    agrees_with_the_snapshot(store, events.next())
    assert store.client.hexists(store.keys.job("job-f"), "event_tail")
    store.update("job-f", progress_percent=47)
    event = events.next()
    assert event["current_step"] == "generate-audio" and event["completed_steps"] == STEPS[:2]
    agrees_with_the_snapshot(store, event)


def test_a_history_entry_is_timed_by_its_stream_id(store, events):
    """Entries carry no `at` of their own: the history's time is the entry's id, the server's
    clock, the same ms as the update's event and the snapshot's progress_updated_at."""
    store.update("job-f", status="running", progress_percent=1)
    store.update("job-f", progress_percent=2)
    first, second = events.next(), events.next()
    history = store.history("job-f")
    assert [h["seq"] for h in history] == [1, 2, 3]  # create_job's entry (with `at`) first
    assert [ms_from_iso(h["at"]) for h in history[1:]] == [first["progress_updated_at_ms"],
                                                           second["progress_updated_at_ms"]]
    entries = store.client.xrange(store.keys.history("job-f"))
    for entry_id, fields in entries[1:]:
        names = {k.decode() if isinstance(k, bytes) else k for k in fields}
        assert "at" not in names
        ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
        assert ms == ms_from_iso(history[entries.index((entry_id, fields))]["at"])


def test_a_percent_only_update_runs_five_commands_and_no_time(redis_server_bin):
    """On a private Redis (its command counts are this test's alone): a percent-only update of
    a running job is HMGET, XADD, HSET and the two PUBLISHes; no TIME, no read of the steps."""
    with embedded_redis(redis_server_bin, "the test counts one server's commands") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        store = ProgressStore(client, Settings.from_env({"REDIS_URL": url}))
        store.create_job("c1", "31452104", steps=STEPS)
        store.update("c1", status="running", current_step="fetch-paper")
        client.config_resetstat()
        for i in range(1, 11):
            assert store.update("c1", progress_percent=i).reason == "ok"
        calls = {name[len("cmdstat_"):]: int(v["calls"]) for name, v in client.info("commandstats").items()}
        calls = {name: n for name, n in calls.items() if not name.startswith(("info", "config"))}
        assert calls == {"evalsha": 10, "hmget": 10, "xadd": 10, "hset": 10, "publish": 20}
        client.close()
