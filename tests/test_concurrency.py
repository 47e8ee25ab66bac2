"""Many writers racing on one job, on a real Redis: the Lua script keeps the truth."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time

import pytest

from progress_service import ProgressStore
from progress_service.models import DEFAULT_STEPS

pytestmark = pytest.mark.backend

WRITERS = 4
UPDATES_EACH = 300


def _writer(url: str, settings, job_id: str, seed: int, out) -> None:
    import redis

    store = ProgressStore(redis.Redis.from_url(url), settings)
    rng = random.Random(seed)
    accepted = []
    for _ in range(UPDATES_EACH):
        kwargs = {"progress_percent": round(rng.uniform(0, 99.9), 2)}
        if rng.random() < 0.2:
            kwargs["current_step"] = rng.choice(DEFAULT_STEPS)
        r = store.update(job_id, **kwargs)
        if r.accepted:
            accepted.append((r.reason, kwargs["progress_percent"], r.seq))
    out.put(accepted)


def test_racing_writers_never_move_progress_back(real_redis, real_redis_url, settings):
    store = ProgressStore(real_redis, settings)
    store.create_job("race", "31452104")
    store.update("race", status="running")

    events: list[dict] = []
    listening = threading.Event()
    done = threading.Event()

    def listen():
        ps = real_redis.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(store.keys.events("race"))
        listening.set()
        while not done.is_set():
            m = ps.get_message(timeout=0.1)
            if m:
                events.append(json.loads(m["data"]))
        while (m := ps.get_message(timeout=0.3)) is not None:
            events.append(json.loads(m["data"]))
        ps.close()

    listener = threading.Thread(target=listen)
    listener.start()
    assert listening.wait(5)
    time.sleep(0.05)  # the SUBSCRIBE reaches the server before the first write

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(real_redis_url, settings, "race", seed, out))
             for seed in range(WRITERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    done.set()
    listener.join(10)

    accepted = [a for r in results for a in r]
    changes = [a for a in accepted if a[0] == "ok"]
    snap = store.get("race")
    assert snap["progress_percent"] == max(a[1] for a in accepted)
    assert len(changes) == snap["seq"] - 2, "each change bumps seq by one"
    assert len(events) == len(changes), "one event per accepted change"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(3, snap["seq"] + 1)), "seq strictly increasing, no gap"
    progress = [e["progress_percent"] for e in events]
    assert progress == sorted(progress), "progress never decreases"
    steps = [DEFAULT_STEPS.index(e["current_step"]) for e in events if e["current_step"]]
    assert steps == sorted(steps), "the step never moves back"
