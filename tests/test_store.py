"""The documented update rules, through ProgressStore, on fakeredis and on a real Redis."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time

import pytest
from helpers import subscribed, wait_until
from tcp_proxy import TcpProxy

from progress_service import InvalidInput, JobConflict, JobNotFound, ProgressStore, Status
from progress_service.errors import BackendUnavailable
from progress_service.models import DEFAULT_STEPS, ms_from_iso
from progress_service.store import connect

STEPS = list(DEFAULT_STEPS)


@pytest.fixture
def job(store):
    store.create_job("job-1", "31452104", steps=STEPS)
    return "job-1"


def clock_passes(store, ms: int, what: str) -> None:
    """Wait until the Redis server's clock, the one every stamp and snapshot is read on,
    is past ``ms``."""
    wait_until(lambda: store.server_time_ms() > ms, what=what)


def stored(store, job_id="job-1"):
    snap = store.get(job_id)
    assert snap is not None
    return snap


def test_create_job_starts_pending_with_the_steps(store, job):
    snap = stored(store)
    assert snap["status"] == "pending"
    assert snap["progress_percent"] == 0
    assert snap["steps"] == STEPS and snap["total_steps"] == 5
    assert snap["completed_steps"] == [] and snap["current_step"] is None
    assert snap["seq"] == 1
    assert snap["created_at"].endswith("Z") and len(snap["created_at"]) == 24
    assert snap["started_at"] is None and snap["finished_at"] is None


def test_creating_a_job_twice_is_a_conflict(store, job):
    with pytest.raises(JobConflict):
        store.create_job("job-1", "31452104")


def test_progress_increases(store, job):
    r = store.update(job, progress_percent=12.5, current_step="fetch-paper", status="running")
    assert (r.accepted, r.reason, r.seq) == (True, "ok", 2)
    snap = stored(store)
    assert snap["progress_percent"] == 12.5
    assert snap["status"] == "running" and snap["started_at"] is not None
    r = store.update(job, progress_percent=40, current_step="generate-audio")
    assert (r.accepted, r.reason, r.seq) == (True, "ok", 3)
    snap = stored(store)
    assert snap["current_step"] == "generate-audio"
    assert snap["completed_steps"] == ["fetch-paper", "generate-script"]


def test_a_regression_is_rejected_and_the_stored_value_kept(store, job):
    store.update(job, progress_percent=60, current_step="generate-videos", status="running")
    before = stored(store)
    for kwargs in (
        {"progress_percent": 0},
        {"progress_percent": 59.9},
        {"current_step": "generate-script"},
        {"current_step": "fetch-paper", "progress_percent": 70},
        {"status": "pending"},
    ):
        r = store.update(job, **kwargs)
        assert (r.accepted, r.reason) == (False, "regression"), kwargs
    after = stored(store)
    for name in ("progress_percent", "current_step", "completed_steps", "status", "seq"):
        assert after[name] == before[name]


def test_force_allows_a_regression(store, job):
    store.update(job, progress_percent=60, current_step="generate-videos", status="running")
    r = store.update(job, progress_percent=20, current_step="generate-script", force=True)
    assert (r.accepted, r.reason) == (True, "ok")
    snap = stored(store)
    assert snap["progress_percent"] == 20
    assert snap["current_step"] == "generate-script"
    assert snap["completed_steps"] == ["fetch-paper"]


@pytest.mark.parametrize("end", ["completed", "failed", "canceled"])
def test_a_terminal_job_takes_no_further_update(store, job, end):
    store.update(job, progress_percent=30, status="running")
    store.update(job, status=end, error="boom" if end == "failed" else None)
    snap = stored(store)
    assert snap["status"] == end and snap["finished_at"] is not None
    for kwargs in ({"progress_percent": 99}, {"status": "running"}, {"message": "hi"}):
        r = store.update(job, **kwargs)
        assert (r.accepted, r.reason) == (False, "terminal")
    assert stored(store)["seq"] == snap["seq"]


def test_force_revives_a_finished_job(store, job):
    store.update(job, status="failed", error="worker lost")
    r = store.update(job, status="running", force=True)
    assert r.accepted
    snap = stored(store)
    assert snap["status"] == "running" and snap["finished_at"] is None
    assert store.client.ttl(store.keys.job(job)) == -1


def test_a_finished_job_gets_its_expiry_but_keeps_it_until_the_mirror_holds_it(store, job):
    store.update(job, status="canceled")
    # Rule 9's TTL counts from finished_at; it is set on the keys once the job's row is in
    # PostgreSQL (tests/test_mirror.py), so no finished job leaves Redis unmirrored.
    assert store.client.ttl(store.keys.job(job)) == -1
    assert store.client.ttl(store.keys.history(job)) == -1
    finished_ms = store.client.hget(store.keys.job(job), "finished_at_ms")
    expires_ms = store.client.hget(store.keys.job(job), "expires_at_ms")
    assert int(expires_ms) == int(finished_ms) + store.settings.job_ttl * 1000
    assert job in {m.decode() if isinstance(m, bytes) else m
                   for m in store.client.zrange(store.keys.mirror_due, 0, -1)}


def test_reaching_100_while_running_completes_the_job(store, job):
    store.update(job, progress_percent=80, current_step="assemble-video", status="running")
    r = store.update(job, progress_percent=100)
    assert (r.reason, r.status) == ("ok", "completed")
    snap = stored(store)
    assert snap["status"] == "completed"
    assert snap["progress_percent"] == 100
    assert snap["current_step"] is None
    assert snap["completed_steps"] == STEPS
    assert snap["finished_at"] is not None


def test_completing_sets_everything_done(store, job):
    store.update(job, progress_percent=30, current_step="generate-script", status="running")
    store.update(job, status="completed", result={"video_url": "file:///v.mp4"})
    snap = stored(store)
    assert (snap["progress_percent"], snap["current_step"]) == (100, None)
    assert snap["completed_steps"] == STEPS
    assert snap["result"] == {"video_url": "file:///v.mp4"}


def test_a_step_starting_on_a_pending_job_means_it_runs(store, job):
    store.update(job, current_step="fetch-paper")
    snap = stored(store)
    assert snap["status"] == "running" and snap["started_at"] is not None


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"progress_percent": 101}, "progress_percent"),
        ({"progress_percent": -1}, "progress_percent"),
        ({"progress_percent": float("nan")}, "progress_percent"),
        ({"progress_percent": "40"}, "progress_percent"),
        ({"progress_percent": True}, "progress_percent"),
        ({"status": "done"}, "status"),
        ({"current_step": "render"}, "current_step"),
        ({"result": ["not", "an", "object"]}, "result"),
        ({"message": 42}, "message"),
    ],
)
def test_invalid_input_raises_and_changes_nothing(store, job, kwargs, text):
    store.update(job, progress_percent=10, status="running")
    before = stored(store)
    with pytest.raises(InvalidInput, match=text):
        store.update(job, **kwargs)
    with pytest.raises(ValueError):
        store.update(job, force=True, **kwargs)
    after = stored(store)
    assert {k: after[k] for k in ("seq", "progress_percent", "status", "current_step")} == {
        k: before[k] for k in ("seq", "progress_percent", "status", "current_step")
    }


def test_validation_happens_inside_the_script_too(store, job):
    """A writer that bypasses the Python checks still cannot store nonsense."""
    k = store.keys
    args = [k.events(job), k.all_events, 100, 60, "banana", "", "", "", "", "", "0"]
    with pytest.raises(Exception, match="INVALID progress_percent"):
        store.scripts.update(keys=[k.job(job), k.history(job)], args=args)
    assert stored(store)["seq"] == 1


def test_an_unknown_job_is_not_found(store):
    r = store.update("nobody", progress_percent=10)
    assert (r.accepted, r.reason) == (False, "not_found")
    assert store.get("nobody") is None
    assert store.heartbeat("nobody") is False


def test_an_update_that_changes_nothing_refreshes_the_timestamp_only(store, job):
    store.update(job, progress_percent=25, status="running")
    before = stored(store)
    events = store.client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(store.keys.events(job))
    wait_until(lambda: subscribed(store.client, store.keys.events(job)), what="the subscription")
    clock_passes(store, ms_from_iso(before["progress_updated_at"]), "a later millisecond")
    r = store.update(job, progress_percent=25, status="running")
    assert (r.accepted, r.reason, r.seq) == (True, "unchanged", before["seq"])
    after = stored(store)
    assert after["seq"] == before["seq"]
    assert after["progress_updated_at"] > before["progress_updated_at"]
    assert len(store.history(job)) == 2
    assert events.get_message(timeout=0.2) is None
    events.close()


@pytest.mark.parametrize("bad", ["", "a b", "-x", "x" * 65, "../etc", "a{b}", None, 7])
def test_bad_ids_raise_value_error(store, bad):
    with pytest.raises(ValueError):
        store.create_job(bad, "31452104")
    with pytest.raises(ValueError):
        store.create_job("ok-id", bad)
    with pytest.raises(ValueError):
        store.update(bad, progress_percent=1)
    with pytest.raises(ValueError):
        store.get(bad)


@pytest.mark.parametrize("bad", ["x\n", "abc\n", "x\r\n", "a\nb"])
def test_an_id_with_a_newline_is_invalid(store, bad):
    """Python's ``$`` matches before a final newline: the id check must not."""
    with pytest.raises(ValueError, match="must match"):
        store.get(bad)
    with pytest.raises(ValueError, match="must match"):
        store.create_job(bad, "31452104")
    with pytest.raises(ValueError, match="must match"):
        store.create_job("ok-id", bad)
    assert not store.client.keys(f"*{store.keys.prefix}*")


def test_the_create_script_refuses_an_id_with_a_newline(store):
    k = store.keys
    args = ["new\n", "p", "video", json.dumps(STEPS), k.events("new"), k.all_events, 100, 0]
    with pytest.raises(Exception, match="job_id must match"):
        store.scripts.create(keys=[k.job("new"), k.history("new")], args=args)


def test_a_huge_bad_id_is_named_not_echoed_whole(store):
    with pytest.raises(ValueError, match=r"job_id must match .*\(10000 characters\)") as err:
        store.get("x" * 10000)
    assert len(str(err.value)) < 300


def test_a_running_job_goes_stale_without_progress(store, job):
    fast = ProgressStore(store.client, dataclasses.replace(store.settings, stale_after=0.2))
    fast.update(job, progress_percent=5, status="running")
    assert fast.get(job)["is_stale"] is False
    assert wait_until(lambda: fast.get(job)["is_stale"], timeout=3)
    fast.update(job, progress_percent=6)
    assert fast.get(job)["is_stale"] is False


def test_a_pending_job_goes_stale_after_its_own_limit(store, job):
    slow = ProgressStore(store.client, dataclasses.replace(
        store.settings, stale_after=0.05, pending_stale_after=0.4))
    clock_passes(slow, ms_from_iso(stored(slow)["created_at"]) + 50, "stale_after to pass")
    assert slow.get(job)["is_stale"] is False  # past stale_after, but pending has its own
    assert wait_until(lambda: slow.get(job)["is_stale"], timeout=3)


def test_a_finished_job_is_never_stale(store, job):
    fast = ProgressStore(store.client, dataclasses.replace(store.settings, stale_after=0.01))
    fast.update(job, status="failed", error="x")
    clock_passes(fast, fast.server_time_ms() + 50, "stale_after to pass")
    assert fast.get(job)["is_stale"] is False


def test_heartbeat_stamps_without_seq_or_event(store, job):
    store.update(job, progress_percent=5, status="running")
    seq = stored(store)["seq"]
    assert store.heartbeat(job) is True
    snap = stored(store)
    assert snap["heartbeat_at"] is not None and snap["seq"] == seq


def test_eta_comes_from_the_history(store, job):
    store.update(job, progress_percent=10, status="running")
    assert stored(store)["eta_seconds"] is None or stored(store)["eta_seconds"] >= 0
    time.sleep(0.2)  # time must pass between these writes: the ETA is a rate
    store.update(job, progress_percent=50)
    eta = stored(store)["eta_seconds"]
    # 40 points in ~0.2 s: the remaining 50 take ~0.25 s
    assert eta is not None and 0.05 < eta < 5


def test_history_is_capped(store, job):
    capped = ProgressStore(store.client, dataclasses.replace(store.settings, history_maxlen=10))
    for p in range(1, 300):
        capped.update(job, progress_percent=p / 3)
    hist = capped.history(job)
    assert len(hist) < 250  # XADD MAXLEN ~ trims in whole nodes
    seqs = [h["seq"] for h in hist]
    assert seqs == sorted(seqs) and seqs[-1] == stored(store)["seq"]


def test_every_accepted_change_is_published_on_both_channels(store, job):
    ps = store.client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(store.keys.events(job), store.keys.all_events)
    wait_until(lambda: subscribed(store.client, store.keys.events(job), store.keys.all_events),
               what="the subscriptions")
    store.update(job, progress_percent=10, status="running")
    got = []
    deadline = time.monotonic() + 3
    while len(got) < 2 and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.1)
        if m:
            got.append(m)
    ps.close()
    assert len(got) == 2
    channels = {m["channel"].decode() if isinstance(m["channel"], bytes) else m["channel"] for m in got}
    assert channels == {store.keys.events(job), store.keys.all_events}
    payload = json.loads(got[0]["data"])
    for name in ("job_id", "seq", "status", "progress_percent", "current_step", "completed_steps",
                 "message", "error", "progress_updated_at_ms"):
        assert name in payload
    assert payload["completed_steps"] == [] and isinstance(payload["progress_updated_at_ms"], int)
    assert (payload["job_id"], payload["seq"], payload["status"]) == (job, 2, "running")


def test_a_late_subscriber_gets_the_snapshot_then_each_change_once(store, job):
    store.update(job, progress_percent=20, current_step="generate-script", status="running")
    seen: list[dict] = []
    subscribed = threading.Event()

    def follow():
        for snap in store.subscribe(job, timeout=10):
            seen.append(snap)
            subscribed.set()

    t = threading.Thread(target=follow)
    t.start()
    assert subscribed.wait(5)
    assert seen[0]["seq"] == 2 and seen[0]["progress_percent"] == 20
    store.update(job, progress_percent=30)
    store.update(job, progress_percent=30)  # unchanged: no event
    store.update(job, progress_percent=10)  # regression: no event
    store.update(job, current_step="generate-audio", progress_percent=45)
    store.update(job, status="completed", result={"video_url": "v.mp4"})
    t.join(10)
    assert not t.is_alive(), "the iterator must end after the terminal state"
    assert [s["seq"] for s in seen] == [2, 3, 4, 5]
    assert [s["progress_percent"] for s in seen] == [20, 30, 45, 100]
    assert seen[-1]["status"] == "completed" and seen[-1]["result"] == {"video_url": "v.mp4"}
    assert seen[-1]["completed_steps"] == STEPS


def test_subscribing_to_a_finished_job_yields_once(store, job):
    store.update(job, status="canceled")
    snaps = list(store.subscribe(job, timeout=5))
    assert len(snaps) == 1 and snaps[0]["status"] == "canceled"


def test_subscribing_to_an_unknown_job_raises(store):
    with pytest.raises(JobNotFound):
        next(store.subscribe("ghost", timeout=1))


class Follower:
    """``store.subscribe("j")`` in a thread: what it yielded, and what it raised."""

    def __init__(self, store: ProgressStore, idle_check: float) -> None:
        self.seen: list[dict] = []
        self.errors: list[BaseException] = []
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(store, idle_check))
        self.thread.start()

    def _follow(self, store: ProgressStore, idle_check: float) -> None:
        try:
            for snap in store.subscribe("j", timeout=30, idle_check=idle_check):
                self.seen.append(snap)
                self.first.set()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(exc)


@pytest.fixture
def cut_link(real_redis, settings):
    """(proxy, watcher, direct): job "j" running at 10% in step a; ``watcher`` reaches Redis
    through ``proxy``, which the test can cut and restore; ``direct`` does not."""
    proxy = TcpProxy(settings.progress_redis_url)
    proxy.up()
    via_proxy = dataclasses.replace(settings, progress_redis_url=proxy.url)
    watcher = ProgressStore(connect(via_proxy), via_proxy)
    direct = ProgressStore(connect(settings), settings)
    direct.create_job("j", "p", steps=["a", "b"])
    direct.update("j", status="running", current_step="a", progress_percent=10)
    yield proxy, watcher, direct
    proxy.down()
    watcher.client.close()
    direct.client.close()


def test_a_subscriber_waits_out_a_redis_outage_and_still_sees_the_end(cut_link, caplog):
    """Redis away mid-job (a restart, a cut link): the iterator does not die with a
    connection error; when Redis is back it reads what changed and ends on the terminal state."""
    proxy, watcher, direct = cut_link
    follower = Follower(watcher, idle_check=0.3)
    try:
        assert follower.first.wait(5)
        proxy.down()
        assert wait_until(lambda: "connection lost" in caplog.text, timeout=10)
        direct.update("j", current_step="b", progress_percent=60)  # both while it is away
        direct.update("j", progress_percent=100)
        proxy.up()
    finally:
        follower.thread.join(15)
    seen, errors = follower.seen, follower.errors
    assert not follower.thread.is_alive() and not errors, errors
    assert seen[0]["progress_percent"] == 10 and seen[-1]["status"] == "completed"
    assert all(a["seq"] < b["seq"] for a, b in zip(seen, seen[1:], strict=False))


def test_a_subscriber_waits_for_a_job_redis_lost_until_its_runner_recreates_it(cut_link, caplog):
    """Redis came back empty: the job is gone for a moment, then re-created above its old seq
    (as worker.runner does). The iterator does not end with "not found" in between."""
    proxy, watcher, direct = cut_link
    missing = []  # the watcher's reads that found no job
    read = watcher.get

    def counted_get(job_id):
        snap = read(job_id)
        if snap is None:
            missing.append(job_id)
        return snap

    watcher.get = counted_get
    follower = Follower(watcher, idle_check=0.2)
    try:
        assert follower.first.wait(5)
        lost_seq = direct.get("j")["seq"]
        proxy.down()
        direct.client.delete(direct.keys.job("j"), direct.keys.history("j"))  # an empty restart
        wait_until(lambda: "connection lost" in caplog.text, what="the watcher to lose Redis")
        proxy.up()
        # The watcher is back and finds no job (twice: the first read did not end it);
        # it must keep waiting.
        wait_until(lambda: len(missing) >= 2 or not follower.thread.is_alive(),
                   what="the watcher to find the job missing after Redis is back")
        assert follower.thread.is_alive() and not follower.errors, follower.errors
        direct.create_job("j", "p", steps=["a", "b"], seq_floor=lost_seq)
        direct.update("j", status="running", current_step="b", progress_percent=60)
        direct.update("j", progress_percent=100)
    finally:
        follower.thread.join(15)
    assert not follower.thread.is_alive() and not follower.errors, follower.errors
    assert follower.seen[-1]["status"] == "completed" and follower.seen[-1]["seq"] > lost_seq


def test_subscribing_without_redis_is_backend_unavailable(settings):
    down = dataclasses.replace(settings, progress_redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailable):
        next(ProgressStore(connect(down), down).subscribe("j", timeout=1))


def test_a_restored_job_keeps_its_creation_and_start_times(store):
    """create_job(created_at_ms=, started_at_ms=), as a runner re-creating a lost job does."""
    original = store.create_job("old", "p", steps=STEPS)
    store.update("old", status="running", progress_percent=5)
    before = store.get("old")
    store.client.delete(store.keys.job("old"), store.keys.history("old"))  # Redis lost it
    created_ms = ms_from_iso(original["created_at"])
    started_ms = ms_from_iso(before["started_at"])
    clock_passes(store, started_ms, "a later millisecond")  # a new stamp would differ
    restored = store.create_job("old", "p", steps=STEPS, seq_floor=before["seq"],
                                created_at_ms=created_ms, started_at_ms=started_ms)
    assert restored["created_at"] == original["created_at"] and restored["seq"] == before["seq"] + 1
    assert store.update("old", status="running", progress_percent=5).reason == "ok"
    after = store.get("old")
    assert after["status"] == "running" and after["started_at"] == before["started_at"]
    assert after["progress_updated_at"] > before["progress_updated_at"]


def test_a_restored_job_is_published_once_already_at_its_state(store):
    """restore_job, as a runner re-creating a running job that Redis lost: one event, already
    running at the job's step, percent, message and start time, never pending/0 first."""
    store.create_job("old", "p", steps=STEPS)
    store.update("old", status="running", current_step=STEPS[2], progress_percent=50, message="half")
    before = store.get("old")
    store.client.delete(store.keys.job("old"), store.keys.history("old"))  # Redis lost it
    ps = store.client.pubsub()
    ps.subscribe(store.keys.events("old"))
    assert wait_until(lambda: (ps.get_message(timeout=0.1) or {}).get("type") == "subscribe", timeout=3)
    started_ms = ms_from_iso(before["started_at"])
    restored = store.restore_job("old", "p", STEPS, "video", seq_floor=before["seq"],
                                 created_at_ms=ms_from_iso(before["created_at"]),
                                 started_at_ms=started_ms, progress_percent=50,
                                 current_step=STEPS[2], message="half")
    store.update("old", progress_percent=60)
    events = []
    deadline = time.monotonic() + 3
    while len(events) < 2 and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.1)
        if m is not None and m["type"] == "message":
            events.append(json.loads(m["data"]))
    ps.close()
    same = ("status", "progress_percent", "current_step", "completed_steps", "message",
            "created_at", "started_at")
    assert {k: restored[k] for k in same} == {k: before[k] for k in same}
    assert restored["seq"] == before["seq"] + 1
    first = events[0]
    assert (first["seq"], first["status"], first["progress_percent"], first["current_step"]) == (
        before["seq"] + 1, "running", 50, STEPS[2])
    assert first["completed_steps"] == STEPS[:2] and first["message"] == "half"
    assert first["started_at_ms"] == started_ms
    assert [e["progress_percent"] for e in events] == [50, 60]
    assert [(h["status"], h["progress_percent"]) for h in store.history("old")] == [
        ("running", 50), ("running", 60)]


def test_a_restored_running_job_without_a_start_time_starts_now(store):
    snap = store.restore_job("r", "p", STEPS, "video", seq_floor=3)
    assert (snap["status"], snap["progress_percent"], snap["current_step"], snap["seq"]) == (
        "running", 0, None, 4)
    assert snap["started_at"] is not None and snap["completed_steps"] == []


@pytest.mark.parametrize("bad", [
    {"status": "completed"}, {"status": "bogus"}, {"progress_percent": 100},
    {"progress_percent": -1}, {"progress_percent": float("nan")}, {"progress_percent": None},
    {"current_step": "no-such-step"}, {"current_step": ""}, {"message": 5},
    {"status": "pending", "progress_percent": 5}, {"seq_floor": -1},
])
def test_a_bad_restore_is_invalid_input_and_writes_nothing(store, bad):
    args = {"seq_floor": 2, **bad}
    with pytest.raises(InvalidInput):
        store.restore_job("job-x", "p", STEPS, "video", **args)
    assert store.get("job-x") is None and store.history("job-x") == []


def test_the_create_script_checks_the_restored_state_before_writing(store):
    """A caller other than ProgressStore (the script's own header is the contract)."""
    k = store.keys
    base = ["job-x", "p", "video", json.dumps(STEPS), k.events("job-x"), k.all_events, 100, 0, "", ""]
    for restore in (["running", "100"], ["running", "x"], ["running", "1", "nope"],
                    ["running", "1", STEPS[0], "no-equals"], ["failed"], ["pending", "0", STEPS[1]]):
        with pytest.raises(InvalidInput):
            store._call(store.scripts.create, [k.job("job-x"), k.history("job-x")], base + restore)
        assert store.client.exists(k.job("job-x"), k.history("job-x")) == 0


def test_a_restore_of_a_job_that_exists_is_a_conflict(store):
    store.create_job("j", "p", steps=STEPS)
    with pytest.raises(JobConflict):
        store.restore_job("j", "p", STEPS, "video", seq_floor=5, progress_percent=10)
    assert store.get("j")["status"] == "pending" and store.get("j")["seq"] == 1


def test_a_new_job_still_gets_its_start_time_when_it_starts(store, job):
    created = stored(store)["created_at"]
    clock_passes(store, ms_from_iso(created), "a later millisecond")
    store.update(job, status="running")
    assert stored(store)["started_at"] > created


@pytest.mark.parametrize(("field", "value"), [
    ("created_at_ms", -1), ("started_at_ms", 1.5), ("started_at_ms", "soon"),
    ("created_at_ms", 4102444800000),  # 2100: in the future of the Redis clock
])
def test_restored_times_must_be_past_whole_milliseconds(store, field, value):
    with pytest.raises(InvalidInput, match=field):
        store.create_job("new", "p", steps=STEPS, **{field: value})
    assert store.get("new") is None


# -- the scripts called directly (another service, a typo in a client) -----------------


def _update_args(store, job_id, **changes):
    keys, args = store._update_call(job_id, progress_percent=50)
    names = ["channel", "all_channel", "maxlen", "ttl", "progress", "step", "status", "message",
             "error", "result", "force"]
    full = [*args, *["", "", "", "", "", "0"][len(args) - 5:]]  # a percent-only call sends 5
    named = dict(zip(names, full, strict=True)) | changes
    return keys, [named[n] for n in names if n in named]


@pytest.mark.parametrize(("changes", "says"), [
    ({"maxlen": "lots"}, "history MAXLEN"),  # would fail in XADD, after the HSET
    ({"maxlen": "1e3"}, "history MAXLEN"),  # a number to Lua, not to XADD
    ({"maxlen": "1" + "0" * 20}, "history MAXLEN"),
    ({"ttl": "1e3"}, "TTL"),  # would fail in EXPIRE, after every write
    ({"ttl": "9" * 19}, "TTL"),
    ({"ttl": "0"}, "TTL"),
    ({"force": "yes"}, "force"),
    ({"channel": ""}, "channel"),
    ({"message": "no equals sign"}, "ARGV[8]"),
    ({"progress": None}, "5 to 11 arguments"),  # the percent missing: only ARGV[1..4] sent
])
def test_a_direct_update_with_broken_arguments_is_refused_before_any_write(store, job, changes,
                                                                           says):
    store.update(job, status="running", progress_percent=10)
    before = (store.client.hgetall(store.keys.job(job)), store.client.xlen(store.keys.history(job)))
    keys, args = _update_args(store, job, **{k: v for k, v in changes.items() if v is not None})
    if None in changes.values():
        args = args[:4]
    with pytest.raises(Exception, match=re.escape(says)) as err:
        store.scripts.update(keys=keys, args=args)
    assert "INVALID" in str(err.value)
    after = (store.client.hgetall(store.keys.job(job)), store.client.xlen(store.keys.history(job)))
    assert after == before  # not half an update: no seq, no history entry


@pytest.mark.parametrize(("index", "value", "says"), [
    (0, 'x"}', "job_id must match"),  # would break every event's JSON
    (1, "../etc", "paper_id must match"),
    (6, "-3", "history MAXLEN"),
    (6, "1e3", "history MAXLEN"),  # would fail in XADD, after the HSET
])
def test_a_direct_create_with_broken_arguments_is_refused(store, index, value, says):
    k = store.keys
    args = ["new", "p", "video", json.dumps(STEPS), k.events("new"), k.all_events, 100, 0]
    args[index] = value
    with pytest.raises(Exception, match=says):
        store.scripts.create(keys=[k.job("new"), k.history("new")], args=args)
    assert store.get("new") is None and store.client.exists(k.history("new")) == 0


# -- eta_seconds ---------------------------------------------------------------------


def test_eta_is_none_until_a_running_job_has_moved_and_once_it_ends(store, job):
    assert stored(store)["eta_seconds"] is None  # pending
    store.update(job, status="running", progress_percent=10)
    assert stored(store)["eta_seconds"] is None  # no rate yet
    time.sleep(0.2)  # time must pass between these writes: the ETA is a rate
    store.update(job, progress_percent=20)
    eta = stored(store)["eta_seconds"]
    # 10 points in >= 0.2 s, 80 to go: >= 1.6 s (less than a minute on any machine)
    assert eta is not None and 1.5 <= eta < 60, eta
    store.update(job, status="completed")
    assert stored(store)["eta_seconds"] is None


def test_eta_follows_the_recent_rate_and_grows_when_progress_stops(store, job, monkeypatch):
    monkeypatch.setattr("progress_service.store.ETA_WINDOW_MS", 500)
    store.update(job, status="running", progress_percent=10)
    # Time must pass between these writes: the ETA is a rate.
    time.sleep(1.5)  # slow at first: over the whole run, 50 to go would take ~2 s
    for p in (20, 30, 40, 50):
        time.sleep(0.03)
        store.update(job, progress_percent=p)
    fast = stored(store)["eta_seconds"]
    # Over the last 500 ms it gained at least 30 points: under a second for the last 50.
    assert fast is not None and fast < 1.0, fast
    last_write = ms_from_iso(stored(store)["progress_updated_at"])
    clock_passes(store, last_write + 500, "the window to empty")  # now nothing moves
    stalled = stored(store)["eta_seconds"]
    time.sleep(0.3)  # time must pass between these reads: a stalled job's ETA grows with it
    later = stored(store)["eta_seconds"]
    assert stalled is not None and later is not None and later > stalled > fast, (fast, stalled, later)


def test_a_subscriber_asking_for_derived_fields_sees_a_stalled_jobs_eta_grow(store, job):
    store.update(job, status="running", progress_percent=10)
    store.update(job, progress_percent=20)
    assert wait_until(lambda: (stored(store)["eta_seconds"] or 0) > 0, timeout=5)
    seen = []
    for snap in store.subscribe(job, timeout=10, idle_check=0.2, derived=True):
        seen.append(snap)
        if len(seen) == 3:
            store.update(job, status="completed")
    running, final = seen[:-1], seen[-1]
    assert len(running) == 3 and {s["seq"] for s in running} == {3}, running
    etas = [s["eta_seconds"] for s in running]
    assert etas == sorted(set(etas)), etas  # re-read, not moved: only the ETA grows
    assert final["status"] == "completed" and final["eta_seconds"] is None


def test_list_jobs_newest_first_and_filtered(store):
    for job_id, paper_id in (("a1", "p1"), ("a2", "p2")):
        created = store.create_job(job_id, paper_id)["created_at"]
        clock_passes(store, ms_from_iso(created), "a later millisecond")  # newest first
    store.create_job("a3", "p1")
    store.update("a3", status="running")
    assert [s["job_id"] for s in store.list_jobs()] == ["a3", "a2", "a1"]
    assert [s["job_id"] for s in store.list_jobs(paper_id="p1")] == ["a3", "a1"]
    assert [s["job_id"] for s in store.list_jobs(status="running")] == ["a3"]
    assert store.latest_job_id("p1") == "a3"
    with pytest.raises(InvalidInput):
        store.list_jobs(status="sleeping")


def test_update_many_applies_each_update_atomically(store, job):
    store.create_job("job-2", "31452104")
    results = store.update_many([
        {"job_id": job, "progress_percent": 10},
        {"job_id": "job-2", "progress_percent": 50},
        {"job_id": job, "progress_percent": 5},
        {"job_id": "missing", "progress_percent": 5},
    ])
    assert [r.reason for r in results] == ["ok", "ok", "regression", "not_found"]
    assert stored(store)["progress_percent"] == 10


# -- numbers: one precision, and bounds --------------------------------------------------


def test_a_percent_a_hair_below_100_is_100_and_completes_the_job(store, job):
    store.update(job, status="running", progress_percent=50)
    r = store.update(job, progress_percent=99.99999999999999)
    assert (r.accepted, r.status) == (True, "completed")
    snap = stored(store)
    assert (snap["status"], snap["progress_percent"]) == ("completed", 100)
    r = store.update(job, progress_percent=99.9999999999999)
    assert r.reason == "terminal"  # not a regression: at 6 decimals it is 100 too


def test_percents_are_compared_at_six_decimals(store, job):
    store.update(job, status="running")
    first = store.update(job, progress_percent=0.1 + 0.2)
    assert first.reason == "ok"
    assert stored(store)["progress_percent"] == 0.3
    for same in (0.1 + 0.2, 0.3, 0.30000000001):
        r = store.update(job, progress_percent=same)
        assert (r.reason, r.seq) == ("unchanged", first.seq), same
    assert store.update(job, progress_percent=33.3333333).reason == "ok"
    assert stored(store)["progress_percent"] == 33.333333
    r = store.update(job, progress_percent=33.33333329)  # a hair lower, the same at 6 decimals
    assert r.reason == "unchanged"
    assert store.update(job, progress_percent=33.333332).reason == "regression"
    assert [h["progress_percent"] for h in store.history(job)][-2:] == [0.3, 33.333333]


def test_a_percent_sent_straight_to_the_script_is_rounded_too(store, job):
    keys, args = _update_args(store, job, progress="12.34567891234", status="running")
    store.scripts.update(keys=keys, args=args)
    assert stored(store)["progress_percent"] == 12.345679


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"progress_percent": 10**400}, "progress_percent"),  # was OverflowError
    ({"progress_percent": -(10**400)}, "progress_percent"),
    ({"progress_percent": float("inf")}, "progress_percent"),
])
def test_huge_numbers_are_invalid_input(store, job, kwargs, says):
    with pytest.raises(InvalidInput, match=says):
        store.update(job, **kwargs)
    assert stored(store)["seq"] == 1


def _nested(depth: int) -> dict:
    result: dict = {"leaf": 1}
    for _ in range(depth - 1):
        result = {"a": result}
    return result


def test_a_result_nested_too_deep_is_invalid_input(store, job):
    with pytest.raises(InvalidInput, match="result"):
        store.update(job, result=_nested(5000))  # was RecursionError
    with pytest.raises(InvalidInput, match="64 levels"):
        store.update(job, result=_nested(65))  # refused by the script
    assert stored(store)["seq"] == 1
    store.update(job, result=_nested(64))
    assert stored(store)["result"] == _nested(64)


@pytest.mark.parametrize("bad", [2**60, 10**12 + 1, 2**53])
def test_a_seq_floor_past_the_bound_is_invalid_input(store, bad):
    with pytest.raises(InvalidInput, match="seq_floor"):
        store.create_job("job-x", "34265844", seq_floor=bad)
    assert store.get("job-x") is None
    assert store.list_jobs() == []


def test_the_highest_seq_floor_keeps_seq_exact(store):
    top = 10**12
    assert store.create_job("job-top", "34265844", seq_floor=top)["seq"] == top + 1
    ps = store.client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(store.keys.events("job-top"))
    wait_until(lambda: subscribed(store.client, store.keys.events("job-top")), what="the subscription")
    assert store.update("job-top", status="running").seq == top + 2
    m = None
    deadline = time.monotonic() + 3
    while m is None and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.1)
    ps.close()
    assert m is not None and json.loads(m["data"])["seq"] == top + 2
    assert [j["seq"] for j in store.list_jobs()] == [top + 2]


@pytest.mark.parametrize("value", [2**60, 2**53, -1])
def test_a_restored_time_past_the_bound_is_invalid_input(store, value):
    with pytest.raises(InvalidInput, match="created_at_ms"):
        store.create_job("job-x", "p", steps=STEPS, created_at_ms=value)


def test_the_create_script_bounds_the_seq_floor(store):
    k = store.keys
    args = ["new", "p", "video", json.dumps(STEPS), k.events("new"), k.all_events, 100, str(2**60)]
    with pytest.raises(Exception, match="seq_floor"):
        store.scripts.create(keys=[k.job("new"), k.history("new")], args=args)
    assert store.get("new") is None


def test_status_values(store):
    assert Status("running").value == "running" and not Status.RUNNING.is_terminal
    assert Status.CANCELED.is_terminal


def test_a_job_recreated_above_a_seq_floor_goes_on_from_there(store):
    """A runner re-creating a job the store lost (Redis restarted empty) continues its seq."""
    ps = store.client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(store.keys.events("job-r"))
    wait_until(lambda: subscribed(store.client, store.keys.events("job-r")), what="the subscription")
    snap = store.create_job("job-r", "34265844", steps=STEPS, seq_floor=41)
    assert snap["seq"] == 42 and snap["status"] == "pending"
    assert [h["seq"] for h in store.history("job-r")] == [42]
    m = None
    deadline = time.monotonic() + 3
    while m is None and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.1)
    ps.close()
    assert m is not None and json.loads(m["data"])["seq"] == 42
    assert store.update("job-r", status="running").seq == 43
    assert store.create_job("job-0", "34265844", seq_floor=0)["seq"] == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_a_bad_seq_floor_is_invalid_input(store, bad):
    with pytest.raises(InvalidInput):
        store.create_job("job-x", "34265844", seq_floor=bad)
    assert store.get("job-x") is None


def test_the_per_paper_index_expires_after_twice_the_job_ttl(store):
    key = store.keys.paper_jobs("34265844")
    ttl = store.settings.job_ttl
    old_ms = store.server_time_ms() - 2 * ttl * 1000 - 60_000
    store.client.zadd(key, {"ancient": old_ms})  # a job created over 2 x job_ttl ago
    store.create_job("job-a", "34265844")
    assert 2 * ttl - 5 <= store.client.ttl(key) <= 2 * ttl
    assert store.recent_job_ids(paper_id="34265844") == ["job-a"]  # the ancient id dropped
    store.client.expire(key, 10)
    store.create_job("job-b", "34265844")
    assert store.client.ttl(key) > 2 * ttl - 5  # refreshed by each creation
    assert store.recent_job_ids(paper_id="34265844") == ["job-b", "job-a"]
