"""The ETA (progress_service.eta) and the step statistics it learns from (progress_service.step_stats).

The estimator is tested as pure functions, with synthetic statistics and a fixed clock; the
statistics through the store (Redis) and the mirror (real Redis and PostgreSQL).
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers import wait_until

from progress_service.config import ConfigError, Settings
from progress_service.durations import percentile
from progress_service.eta import (
    Estimate,
    JobState,
    LiveEta,
    QueuePlace,
    batch_eta,
    estimate,
    pending_estimate,
    rate_eta,
)
from progress_service.models import iso_ms, ms_from_iso
from progress_service.step_stats import (
    CompletedJob,
    StepStats,
    StepTimes,
    compute_stats,
    from_hash,
    to_hash,
)

NOW = 1_800_000_000_000  # a fixed Redis clock, ms
STEPS = ("a", "b", "c")
# Step a is typically 10 s on the bar's first 20 %, b 20 s on 20..60 %, c 30 s on 60..100 %.
STATS = StepStats(
    pipeline="p", steps=STEPS, jobs=20, job_p50=60.0, job_p90=75.0,
    step_times={"a": StepTimes(10.0, 12.0, 20, 0.0), "b": StepTimes(20.0, 25.0, 20, 20.0),
                "c": StepTimes(30.0, 40.0, 20, 60.0)},
)


def running(progress, step, *, step_started_s_ago=None, completed=None):
    return JobState("running", progress, STEPS, step, STEPS.index(step) if completed is None else completed,
                    None if step_started_s_ago is None else NOW - int(step_started_s_ago * 1000))


# -- the estimator's arithmetic ------------------------------------------------------------


def test_history_is_the_rest_of_the_current_step_plus_the_typical_steps_after_it():
    # halfway through b (40 % of 20..60), 10 s into it, as typical: 10 s of b left, then c's 30 s
    assert estimate(running(40, "b", step_started_s_ago=10), NOW, STATS) == Estimate(40.0, "history")
    # b at half its bar after 20 s is twice as slow as typical: its own pace counts by half
    # (f = 0.5): 0.5 * (0.5 * 20) + 0.5 * (20 * 0.5 / 0.5) = 15 s of b, then 30 s of c
    assert estimate(running(40, "b", step_started_s_ago=20), NOW, STATS) == Estimate(45.0, "history")
    # without the step's start time, the bar alone: half of b's 20 s, then c
    assert estimate(running(40, "b"), NOW, STATS) == Estimate(40.0, "history")


def test_a_step_that_shows_no_progress_of_its_own_is_timed_from_its_start():
    # the bar sits where b starts (20 %): b's 20 s less the 5 s it has run, then c's 30 s
    assert estimate(running(20, "b", step_started_s_ago=5), NOW, STATS) == Estimate(45.0, "history")
    # longer than typical already: nothing of b is counted, c still is
    assert estimate(running(20, "b", step_started_s_ago=50), NOW, STATS) == Estimate(30.0, "history")
    # no start time either: all of b
    assert estimate(running(20, "b"), NOW, STATS) == Estimate(50.0, "history")


def test_the_live_rate_is_blended_in_by_the_share_of_typical_work_done():
    # 20 s ago the bar was at 20 % (b's start: 10 typical seconds of work done), now at 40 %
    # (20 done): 10 typical seconds of work in 20 s, half the typical speed, so the rate says
    # the 40 typical seconds left take 80 s. History (20 s into b at half its bar) says 45 s;
    # a third of the typical 60 s of work is done, so the rate weighs a third:
    # 2/3 * 45 + 1/3 * 80 = 56.67 (ETAs are rounded to 10 ms).
    slow = running(40, "b", step_started_s_ago=20)
    assert estimate(slow, NOW, STATS, [(NOW - 20_000, 20.0)]) == Estimate(56.67, "blend")
    # at the typical speed (10 s for the same 10 s of work) the rate agrees with history
    typical = running(40, "b", step_started_s_ago=10)
    assert estimate(typical, NOW, STATS, [(NOW - 10_000, 20.0)]) == Estimate(40.0, "blend")


def test_the_rate_weighs_more_as_the_job_advances():
    # The same slowness (half the typical speed over the last 5 s: the rate says 2 * history)
    # early in the job and late in it. The rate's weight is the share of typical work done.
    early = running(25, "b", step_started_s_ago=2.5)  # 1/8 into b, as typical: 47.5 s left
    assert estimate(early, NOW, STATS) == Estimate(47.5, "history")
    # 12.5 of 60 typical seconds done: 47.5 * (1 + 12.5 / 60)
    assert estimate(early, NOW, STATS, [(NOW - 5_000, 20.0)]) == Estimate(57.4, "blend")
    late = running(95, "c", step_started_s_ago=26.25)  # 7/8 into c, as typical: 3.75 s left
    assert estimate(late, NOW, STATS) == Estimate(3.75, "history")
    # 56.25 of 60 done, 3.75 typical seconds of work in the last 5 s: the rate says 5 s;
    # 1/16 * 3.75 + 15/16 * 5
    assert estimate(late, NOW, STATS, [(NOW - 5_000, 90.0)]) == Estimate(4.92, "blend")


def test_without_history_the_rate_alone_as_before():
    job = running(40, "b", step_started_s_ago=10)
    recent = [(NOW - 20_000, 20.0)]
    assert estimate(job, NOW, None, recent) == Estimate(rate_eta("running", 40, NOW, recent), "rate")
    assert estimate(job, NOW, None, recent) == Estimate(60.0, "rate")  # 20 % in 20 s, 60 % to go
    # statistics that lack a step still to run are no history either
    partial = dataclasses.replace(STATS, step_times={"a": STATS.step_times["a"]})
    assert estimate(job, NOW, partial, recent).source == "rate"


def test_without_a_rate_history_alone_and_with_neither_nothing():
    job = running(40, "b", step_started_s_ago=10)
    assert estimate(job, NOW, STATS, []).source == "history"
    assert estimate(job, NOW, STATS, [(NOW - 5_000, 40.0)]).source == "history"  # has not moved
    assert estimate(job, NOW, None, []) == Estimate(None, None)
    for status in ("completed", "failed", "canceled"):
        assert estimate(dataclasses.replace(job, status=status), NOW, STATS, [(NOW - 5_000, 20.0)]) \
            == Estimate(None, None)


def test_a_pending_job_waits_for_the_jobs_ahead_of_it_shared_among_the_workers():
    assert pending_estimate(STATS) == Estimate(60.0, "history")  # its place unknown: its own typical run
    assert pending_estimate(STATS, QueuePlace(ahead=0, workers=1)) == Estimate(60.0, "history")
    # 4 ahead, 2 workers: two rounds of 60 s, then its own 60 s
    assert pending_estimate(STATS, QueuePlace(ahead=4, workers=2)) == Estimate(180.0, "history")
    assert pending_estimate(STATS, QueuePlace(ahead=4, workers=0)) == Estimate(None, None)  # nobody listens
    assert pending_estimate(None, QueuePlace(ahead=4, workers=2)) == Estimate(None, None)
    # without the whole job's p50, the sum of its steps' p50
    assert pending_estimate(dataclasses.replace(STATS, job_p50=None)) == Estimate(60.0, "history")
    pending = JobState("pending", 0, STEPS, None, 0)
    assert estimate(pending, NOW, STATS) == Estimate(60.0, "history")


def test_a_batch_shares_its_members_work_among_the_running_ones():
    members = [running(40, "b", step_started_s_ago=10), running(20, "b", step_started_s_ago=5)]
    # 40 s + 45 s left, and two pending jobs of 60 s, on two workers: (85 + 120) / 2
    assert batch_eta(members, 2, NOW, STATS) == 102.5
    # never less than its slowest running member
    assert batch_eta(members, 0, NOW, STATS) == 45.0
    assert batch_eta([], 3, NOW, STATS) == 180.0  # nothing runs yet: one at a time, as far as we know
    assert batch_eta(members, 2, NOW, None) is None


def test_live_eta_follows_the_events_with_the_pipelines_statistics():
    live = LiveEta(lambda pipeline: STATS if pipeline == "p" else None)
    base = {"job_id": "j", "pipeline": "p", "seq": 2, "status": "running", "progress_percent": 10,
            "current_step": "a", "steps": list(STEPS), "completed_steps": [], "is_stale": False,
            "eta_seconds": None, "eta_source": None, "progress_updated_at": None}
    event = {"job_id": "j", "seq": 3, "status": "running", "progress_percent": 20, "current_step": "b",
             "completed_steps": ["a"], "progress_updated_at_ms": NOW}
    snap = live.advance(base, event)
    # b has just begun (this event): all of it, then c
    assert (snap["eta_seconds"], snap["eta_source"]) == (50.0, "history")
    later = live.advance(snap, {**event, "seq": 4, "progress_percent": 40, "progress_updated_at_ms": NOW + 10_000})
    assert later["eta_source"] == "blend" and later["eta_seconds"] == 40.0  # typical speed: both agree
    assert LiveEta().advance(base, {**event, "progress_updated_at_ms": NOW})["eta_source"] is None


# -- the statistics ----------------------------------------------------------------------


def history(durations, starts=(0, 20, 60), t0=1_000_000):
    """A completed job's history whose steps took ``durations`` seconds (ms entries)."""
    entries, at, seq = [{"seq": 1, "at": t0 - 500, "current_step": None, "status": "pending",
                         "progress_percent": 0}], t0, 2
    for step, seconds, start in zip(STEPS, durations, starts, strict=True):
        entries.append({"seq": seq, "at": at, "current_step": step, "status": "running", "progress_percent": start})
        seq += 1
        at += int(seconds * 1000)
    entries.append({"seq": seq, "at": at, "current_step": None, "status": "completed", "progress_percent": 100})
    return entries


def test_statistics_are_each_steps_p50_and_p90_and_where_the_bar_starts_it():
    jobs = [CompletedJob(STEPS, iso_ms(1_000_000), iso_ms(1_000_000 + sum(d) * 1000), history(d))
            for d in ([10, 20, 30], [12, 18, 31], [8, 22, 29], [11, 19, 30], [9, 21, 40])]
    stats = compute_stats("p", jobs)
    assert stats.steps == STEPS and stats.jobs == 5
    assert stats.step_times["a"] == StepTimes(10.0, 11.6, 5, 0.0)
    assert stats.step_times["b"].p50 == 20.0 and stats.step_times["b"].start_percent == 20.0
    assert stats.step_times["c"].p50 == 30.0 and stats.step_times["c"].p90 == 36.4
    assert (stats.job_p50, stats.job_p90) == (60.0, 66.4)
    assert from_hash("p", to_hash(stats)) == stats
    assert from_hash("p", {}) is None and from_hash("p", {"steps": "[", "jobs": "1"}) is None
    assert percentile([3.0], 90) == 3.0 and percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_the_number_of_jobs_learned_from_is_configured():
    assert Settings.from_env({}).eta_history_jobs == 50
    assert Settings.from_env({"PROGRESS_ETA_HISTORY_JOBS": " 7 "}).eta_history_jobs == 7
    for bad in ("0", "-3", "ten", "2.5", "100000"):
        with pytest.raises(ConfigError, match="PROGRESS_ETA_HISTORY_JOBS"):
            Settings.from_env({"PROGRESS_ETA_HISTORY_JOBS": bad})


# -- through the store ---------------------------------------------------------------------


def test_a_step_change_writes_when_the_step_began(store):
    store.create_job("j1", "p1", steps=list(STEPS), pipeline="p")
    store.update("j1", status="running", current_step="a", progress_percent=1)
    first = int(store.client.hget(store.keys.job("j1"), "step_started_ms"))
    store.update("j1", progress_percent=10)  # the same step: its start stays
    assert int(store.client.hget(store.keys.job("j1"), "step_started_ms")) == first
    wait_until(lambda: store.server_time_ms() > first, what="a later millisecond")
    store.update("j1", current_step="b", progress_percent=20)
    started = int(store.client.hget(store.keys.job("j1"), "step_started_ms"))
    assert started > first
    assert started == ms_from_iso(store.get("j1")["progress_updated_at"])  # the step change's own time


def test_a_snapshot_reads_the_eta_from_the_pipelines_statistics_in_redis(store):
    store.create_job("j1", "p1", steps=list(STEPS), pipeline="p")
    assert store.get("j1")["eta_source"] is None  # nothing learned yet
    store.save_step_stats(STATS)
    fresh = type(store)(store.client, store.settings)  # another process: reads Redis, not our cache
    assert (fresh.get("j1")["eta_seconds"], fresh.get("j1")["eta_source"]) == (60.0, "history")
    store.update("j1", status="running", current_step="b", progress_percent=20)
    snap = fresh.get("j1")
    # b has just begun: about b's 20 s and c's 30 s (less the moment since the update)
    assert snap["eta_source"] in ("history", "blend") and 45 <= snap["eta_seconds"] <= 50, snap
    store.update("j1", status="completed")
    assert (fresh.get("j1")["eta_seconds"], fresh.get("j1")["eta_source"]) == (None, None)


def test_a_batch_eta_follows_from_its_members(store):
    store.save_step_stats(STATS)
    ids = ["m1", "m2", "m3"]
    store.create_batch("b1", ids, "p")
    for job_id in ids:
        store.create_job(job_id, job_id, steps=list(STEPS), pipeline="p", batch_id="b1")
    assert store.get_batch("b1")["eta_seconds"] is None  # pending: nothing runs yet
    store.update("m1", status="running", current_step="a", progress_percent=0)
    batch = store.get_batch("b1")
    # m1 has all 60 s ahead, two more jobs of 60 s wait: on the one worker that runs, ~180 s
    assert batch["status"] == "running" and 170 <= batch["eta_seconds"] <= 180, batch


@pytest.mark.backend
def test_the_mirror_refreshes_the_statistics_in_redis_as_jobs_land(connected_store, db_url):
    from progress_service.mirror import Mirror

    store = type(connected_store)(connected_store.client,
                                  dataclasses.replace(connected_store.settings, eta_history_jobs=3))
    reader = type(store)(store.client, store.settings)  # a web process's store
    reader.stats_ttl = 0

    def run(job_id, outcome="completed"):
        store.create_job(job_id, job_id, steps=list(STEPS), pipeline="p")
        for i, step in enumerate(STEPS):
            store.update(job_id, status="running", current_step=step, progress_percent=i * 30)
        store.update(job_id, status=outcome, error="boom" if outcome == "failed" else None)

    with Mirror(store, db_url) as mirror:
        run("j1")
        assert reader.step_stats("p") is None
        assert mirror.sweep() == 1
        stats = reader.step_stats("p")
        assert stats is not None and stats.jobs == 1 and stats.steps == STEPS
        assert set(stats.step_times) == set(STEPS) and stats.job_p50 is not None
        raw = store.client.hgetall(store.keys.step_stats("p"))
        assert set(raw) == {"steps", "jobs", "job_p50", "job_p90", "step:a", "step:b", "step:c"}
        run("j2", "failed")  # a failed job teaches nothing
        mirror.sweep()
        assert reader.step_stats("p").jobs == 1
        for job_id in ("j3", "j4", "j5"):
            run(job_id)
        mirror.sweep()
        assert reader.step_stats("p").jobs == 3  # PROGRESS_ETA_HISTORY_JOBS=3: the latest three
        store.create_job("j6", "j6", steps=list(STEPS), pipeline="p")
        assert reader.get("j6")["eta_source"] == "history"  # the new job gets a typical duration
        assert mirror.fetch("j1")["eta_source"] is None


@pytest.mark.backend
def test_a_queued_jobs_eta_counts_the_jobs_ahead_of_it_and_the_workers(connected_store, settings, rq_conn):
    from rq import Worker

    from progress_service.queue import RQQueueProbe, submit_job

    store = connected_store
    store.queue_probe = RQQueueProbe(settings, rq_conn)
    store.save_step_stats(dataclasses.replace(STATS, pipeline="video"))
    ids = [submit_job(settings, f"p{i}", store=store, redis_conn=rq_conn, job_id=f"{settings.key_prefix}-{i}")
           for i in range(3)]
    # nobody listens on the queue: no ETA (the page says so), nor a typical duration as one
    assert [store.get(j)["eta_seconds"] for j in ids] == [None, None, None]
    workers = [Worker([settings.queue_name], connection=rq_conn, name=f"{settings.key_prefix}-w{i}")
               for i in range(2)]
    for worker in workers:
        worker.register_birth()  # in RQ's registry: two workers listen
    try:
        # 0, 1 and 2 jobs ahead, 60 s each, on two workers, then its own 60 s
        assert [(s["eta_seconds"], s["eta_source"]) for s in store.get_many(ids)] \
            == [(60.0, "history"), (90.0, "history"), (120.0, "history")]
        assert store.get(ids[2])["eta_seconds"] == 120.0
    finally:
        for worker in workers:
            worker.register_death()
