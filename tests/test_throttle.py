"""The worker's write throttle (README, "The update rules": first at once, percent-only merged, nothing dropped)."""

from __future__ import annotations

import threading
import time

import pytest

from progress_service import Throttle


class Recorder:
    def __init__(self):
        self.writes: list[tuple[float, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, fields):
        with self.lock:
            self.writes.append((time.monotonic(), dict(fields)))

    def values(self, name):
        with self.lock:
            return [w[name] for _, w in self.writes if name in w]


def test_a_thousand_percent_updates_make_a_handful_of_writes():
    rec = Recorder()
    th = Throttle(rec, min_interval=0.1)
    start = time.monotonic()
    for i in range(1000):
        th.update(progress_percent=i / 10)
        if i == 0:
            assert len(rec.writes) == 1, "the first change goes at once"
        time.sleep(0.0004)
    assert time.monotonic() - start < 1.0
    th.close()
    assert 2 <= len(rec.writes) <= 12, len(rec.writes)
    assert rec.values("progress_percent")[-1] == 99.9, "the last value always lands"
    assert rec.values("progress_percent") == sorted(rec.values("progress_percent"))


def test_the_trailing_write_lands_without_another_call():
    rec = Recorder()
    th = Throttle(rec, min_interval=0.05)
    th.update(progress_percent=1)
    th.update(progress_percent=2)
    th.update(progress_percent=3)
    assert rec.values("progress_percent") == [1]
    deadline = time.monotonic() + 2
    while len(rec.writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rec.values("progress_percent") == [1, 3]
    th.close()
    assert len(rec.writes) == 2, "close has nothing left to write"


@pytest.mark.parametrize("urgent", [{"current_step": "generate-audio"}, {"status": "failed"}])
def test_step_and_status_changes_are_written_at_once(urgent):
    rec = Recorder()
    th = Throttle(rec, min_interval=10)
    th.update(progress_percent=1)
    th.update(progress_percent=5)
    th.update(**urgent)
    assert len(rec.writes) == 2
    assert rec.writes[-1][1] == {"progress_percent": 5, **urgent}, "merged percent rides along"
    th.close()


def test_a_failed_write_keeps_the_values_for_the_next_try():
    calls = []

    def flaky(fields):
        calls.append(dict(fields))
        if len(calls) == 2:
            raise ConnectionError("redis restarting")

    th = Throttle(flaky, min_interval=0)
    th.update(progress_percent=1)
    with pytest.raises(ConnectionError):
        th.update(progress_percent=2, message="halfway")
    th.update(progress_percent=3)
    assert calls[-1] == {"progress_percent": 3, "message": "halfway"}


def test_zero_interval_writes_everything():
    rec = Recorder()
    th = Throttle(rec, min_interval=0)
    for i in range(50):
        th.update(progress_percent=i)
    assert len(rec.writes) == 50


def test_throttle_over_the_store(store):
    store.create_job("t1", "31452104")
    th = Throttle(lambda f: store.update("t1", **f), min_interval=0.05)
    th.update(status="running", current_step="fetch-paper")
    for i in range(1, 200):
        th.update(progress_percent=i / 4)
    th.update(current_step="generate-script")
    th.close()
    snap = store.get("t1")
    assert snap["progress_percent"] == 49.75 and snap["current_step"] == "generate-script"
    assert snap["seq"] < 20


def test_a_trailing_write_that_fails_is_kept_and_raises_nowhere(monkeypatch):
    """The timer's write fails (Redis away): no traceback from the timer's thread
    (threading.excepthook), the value kept for the next write, and cancel() drops it."""
    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    calls = []
    failed = threading.Event()

    def flaky(fields):
        calls.append(dict(fields))
        if len(calls) == 2:
            failed.set()
            raise ConnectionError("redis away")

    th = Throttle(flaky, min_interval=0.05)
    th.update(progress_percent=1)
    th.update(progress_percent=2)  # merged: the timer writes it, and fails
    assert failed.wait(2)
    th.update(current_step="b")
    assert calls[-1] == {"progress_percent": 2, "current_step": "b"}
    assert escaped == [], "the timer's thread raised"
    th.update(progress_percent=3)
    th.cancel()
    time.sleep(0.1)  # past the interval: a timer that survived cancel() would write now
    assert calls[-1] == {"progress_percent": 2, "current_step": "b"}
