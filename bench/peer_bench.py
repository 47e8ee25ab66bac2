"""One progress update, ours against BullMQ, RQ and a bare EVALSHA, on one private Redis.

    .venv/bin/python bench/peer_bench.py [--jobs 1000] [--rounds 7] [--updates 100] [--readers 200]

Starts a redis-server of its own (INFO's CPU counters and commandstats then count
this bench alone, not the other users of a shared server) and puts the same
workload through four writers, in interleaved rounds (the order rotates, so a busy
moment slows each alike), each round ``--jobs`` updates, one per job, pipelined in
chunks of 100 as a busy worker fleet would send them:

- ours: ``ProgressStore.update_many`` (lua/update_progress-2.lua: the update rules,
  the history stream, both PUBLISHes), with the web's one subscriber on the
  all-jobs channel, as in production;
- BullMQ: its real ``updateProgress-3.lua``, fetched at bench time from the
  ``bullmq`` npm package (``npm pack``) into ``--cache`` (never committed), its
  ``@include``s resolved as BullMQ's loader does, called as BullMQ's client calls
  it (EVALSHA, 3 keys, job id and progress);
- RQ: ``Job.save_meta`` with the progress in ``meta`` (one HSET of the pickled
  meta), on real RQ jobs;
- floor: a bare EVALSHA of ``return 1``.

Prints per writer the Redis CPU per update (INFO's used_cpu_user + used_cpu_sys,
so socket reads and writes count too; and commandstats' usec of the command
itself), the memory of one running job after ``--updates`` updates (MEMORY USAGE;
BullMQ's job plus its share of the queue's event stream), the latency from an
update to a reader (ours: the all-jobs pub/sub channel the web listens on, and an
SSE client of the real web app; BullMQ: ``XREAD BLOCK`` on its event stream), and
the ratios against BullMQ. Also the memory the history would take as a capped
LIST instead of a stream (a question for the public contract: see README, "Benchmarks").

Targets (issue 14): CPU per update <= BullMQ's; memory of a running job after 100
updates <= 1.5 KB; update -> SSE client p50 <= BullMQ's XREAD reader. Each line
says OK or BELOW; exit status 1 when one is missed. BullMQ is skipped, saying why,
when npm is unavailable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from readers import (  # noqa: E402
    PubSubReader,
    Reader,
    SseReader,
    XReadReader,
    reader_latency,
    start_web,
    stop_web,
)

from progress_cli.embedded import EmbeddedRedis  # noqa: E402
from progress_service.config import Settings  # noqa: E402
from progress_service.models import DEFAULT_STEPS, entry_at_ms  # noqa: E402
from progress_service.store import ProgressStore  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "progress-service-bench"
MEMORY_TARGET = 1536  # bytes of one running job after 100 updates
CHUNK = 100  # commands per pipelined round trip


# -- BullMQ's script, from its npm package ------------------------------------------------

def bullmq_script(cache: Path, npm_command: str = "npm") -> tuple[str | None, str]:
    """(the source of BullMQ's updateProgress-3.lua with its includes resolved, version),
    or (None, why not)."""
    found = sorted(cache.glob("bullmq-*.tgz"))
    if not found:
        npm = shutil.which(npm_command)
        if npm is None:
            return None, "npm is not installed"
        cache.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([npm, "pack", "bullmq", "--silent", "--pack-destination", str(cache)],
                           check=True, capture_output=True, timeout=120)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"npm pack bullmq failed: {exc}"
        found = sorted(cache.glob("bullmq-*.tgz"))
        if not found:
            return None, "npm pack bullmq wrote no tarball"
    tarball = found[-1]
    version = tarball.name[len("bullmq-"):-len(".tgz")]
    with tarfile.open(tarball) as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        base = "package/dist/cjs/commands/"

        def read(name: str) -> str:
            member = tar.extractfile(files[base + name])
            assert member is not None
            return member.read().decode()

        seen: set[str] = set()

        def resolve(text: str) -> str:
            # BullMQ's script loader replaces each `--- @include "<path>"` by the file, once.
            def include(match: re.Match[str]) -> str:
                name = match.group(1) + ".lua"
                if name in seen:
                    return ""
                seen.add(name)
                return resolve(read(name))
            return re.sub(r'^--- @include "([^"]+)"\s*$', include, text, flags=re.M)

        return resolve(read("updateProgress-3.lua")), version


# -- measuring ------------------------------------------------------------------------------

def cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_usec(client: redis.Redis) -> dict[str, float]:
    return {name[len("cmdstat_"):]: float(v["usec"]) for name, v in client.info("commandstats").items()}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered) + 0.5)) - 1))]


class Writer:
    """One system's update path: ``write(n)`` sends one update to each of the first n jobs."""

    def __init__(self, name: str, command: str, write: Callable[[int], None]) -> None:
        self.name = name
        self.command = command  # the commandstats entry its update is
        self.write = write
        self.cpu_us: list[float] = []
        self.cmd_us: list[float] = []


def measure_rounds(client: redis.Redis, writers: list[Writer], jobs: int, rounds: int) -> None:
    for w in writers:  # warm up: connections, script caches, first stream nodes
        w.write(jobs)
    for r in range(rounds):
        order = writers[r % len(writers):] + writers[:r % len(writers)]
        for w in order:
            before_cpu, before_cmd = cpu_seconds(client), command_usec(client)
            w.write(jobs)
            after_cpu, after_cmd = cpu_seconds(client), command_usec(client)
            w.cpu_us.append((after_cpu - before_cpu) * 1e6 / jobs)
            w.cmd_us.append((after_cmd.get(w.command, 0) - before_cmd.get(w.command, 0)) / jobs)


# Where ours goes: the fast path's commands one by one, each part adding one, with the
# arguments ProgressStore sends (a percent-only update of a running job), each part
# answering as the script does (one string).
_HMGET = ("local rcall = redis.call\n"
          "local hot = rcall('HMGET', KEYS[1], 'status', 'progress_percent', 'seq', 'current_step', "
          "'event_tail')\nlocal seq = tostring(tonumber(hot[3]) + 1)\n")
_XADD = ("local id = rcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, "
         "'progress_percent', ARGV[5], 'current_step', hot[4], 'status', hot[1])\n"
         "local now = string.sub(id, 1, string.find(id, '-', 1, true) - 1)\n")
_HSET = "rcall('HSET', KEYS[1], 'progress_percent', ARGV[5], 'seq', seq, 'progress_updated_at_ms', now)\n"
_PUBLISH = ("local payload = '{\"seq\":' .. seq .. ',\"status\":\"' .. hot[1] .. '\",\"progress_percent\":' "
            ".. ARGV[5] .. ',\"progress_updated_at_ms\":' .. now .. ',' .. hot[5] .. '}'\n"
            "rcall('PUBLISH', ARGV[1], payload)\nrcall('PUBLISH', ARGV[2], payload)\n")
_RETURN = "return 'ok ' .. seq .. ' running'"
PARTS = [
    ("HMGET of 5 fields", _HMGET),
    ("+ XADD to the history", _HMGET + _XADD),
    ("+ HSET of 3 fields", _HMGET + _XADD + _HSET),
    ("+ the event, 2 PUBLISHes", _HMGET + _XADD + _HSET + _PUBLISH),
]


def part_writers(raw: redis.Redis, store: ProgressStore, jobs: list[str]) -> list[Writer]:
    """A writer per part: the same percent-only update as ours, through the part alone."""
    out = []
    tick = [0]
    for name, body in PARTS:
        sha = raw.script_load(body + _RETURN)

        def write(n: int, sha: str = sha) -> None:
            tick[0] += 1
            for start in range(0, n, CHUNK):
                pipe = raw.pipeline(transaction=False)
                for j in jobs[start:min(n, start + CHUNK)]:
                    keys, args = store._update_call(j, progress_percent=tick[0] * 0.001)
                    pipe.evalsha(sha, len(keys), *keys, *args)
                pipe.execute()
        out.append(Writer(name, "evalsha", write))
    return out


def memory_of(client: redis.Redis, *keys: str) -> int:
    return sum(client.memory_usage(k, samples=0) or 0 for k in keys)


def list_history_bytes(client: redis.Redis, store: ProgressStore, job_id: str, cap: int) -> int:
    """What the job's history would take as a LIST of compact entries capped at ``cap``
    (``seq,at,percent,step,status`` per entry), written as LPUSH + LTRIM would."""
    key = f"{store.keys.prefix}:listprobe:{job_id}"
    entries = [",".join(str(x) for x in (e["seq"], entry_at_ms(e, entry_id), e["progress_percent"],
                                         e["current_step"], e["status"]))
               for entry_id, e in client.xrange(store.keys.history(job_id))]
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.lpush(key, entry)
        pipe.ltrim(key, 0, cap - 1)
    pipe.execute()
    size = memory_of(client, key)
    client.delete(key)
    return size


def tuned_memory(client: redis.Redis, settings: Settings, updates: int) -> list[tuple[str, int]]:
    """Memory of the same running job on a Redis configured for small jobs: streams in
    nodes of at most 512 bytes (not the 4 KB a new stream preallocates) and hashes kept
    as a listpack up to 256-byte values (the steps' JSON passes the default 64), with
    the history capped at 1,000 entries (today's setting) and at 20; and that hash
    with the history as a LIST of 20."""
    old = {name: client.config_get(name)[name] for name in ("stream-node-max-bytes", "hash-max-listpack-value")}
    client.config_set("stream-node-max-bytes", 512)
    client.config_set("hash-max-listpack-value", 256)
    out = []
    try:
        for maxlen in (1000, 20):
            store = ProgressStore(client, dataclasses.replace(settings, history_maxlen=maxlen))
            job_id = f"tuned{maxlen}"
            store.create_job(job_id, "31452104", steps=DEFAULT_STEPS)
            for i in range(1, updates + 1):
                store.update(job_id, progress_percent=i * 0.9, status="running")
            out.append((f"512 B stream nodes, history cap {maxlen}",
                        memory_of(client, store.keys.job(job_id), store.keys.history(job_id))))
        # the listpack hash with the history as a LIST of 20 (what meets the goal)
        out.append(("listpack hash, history a LIST of 20",
                    memory_of(client, store.keys.job(job_id))
                    + list_history_bytes(client, store, job_id, 20)))
    finally:
        for name, value in old.items():
            client.config_set(name, value)
    return out


# -- the bench -------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per system; one update each per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--updates", type=int, default=100, help="updates of the job whose memory is measured")
    ap.add_argument("--readers", type=int, default=200, help="updates timed to each reader")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the bullmq npm tarball is kept")
    ap.add_argument("--npm", default="npm", help="the npm command that fetches bullmq")
    ap.add_argument("--no-sse", action="store_true", help="skip the SSE reader (no gunicorn)")
    ap.add_argument("--baseline", type=Path, metavar="LUA",
                    help="an earlier update_progress-2.lua (e.g. `git show main:lua/update_progress-2.lua`"
                         " saved to a file): measured alongside, on jobs of its own, as 'baseline'")
    args = ap.parse_args()

    started = time.monotonic()
    load = os.getloadavg()[0]
    bull_source, bull_version = bullmq_script(args.cache, args.npm)
    tmp = tempfile.mkdtemp(prefix="peer-bench-")
    server = EmbeddedRedis(base_dir=tmp)
    web = None
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        prefix = "bench"
        settings = Settings.from_env({"REDIS_URL": server.url, "PROGRESS_KEY_PREFIX": prefix})
        store = ProgressStore(redis.Redis.from_url(server.url, decode_responses=True), settings)
        jobs = [f"j{i}" for i in range(args.jobs)]
        for j in jobs:
            store.create_job(j, "31452104", steps=DEFAULT_STEPS)
        store.update_many({"job_id": j, "status": "running", "current_step": DEFAULT_STEPS[0]} for j in jobs)

        # the web's one subscriber on the all-jobs channel, as in production (it reads, so
        # PUBLISH pays for a real delivery)
        hub = redis.Redis.from_url(server.url).pubsub(ignore_subscribe_messages=True)
        hub.subscribe(**{store.keys.all_events: lambda message: None})
        hub_thread = hub.run_in_thread(sleep_time=0.5, daemon=True)

        ticks = {"ours": 0, "bullmq": 0, "rq": 0}

        def ours(n: int) -> None:
            ticks["ours"] += 1
            base = ticks["ours"] * 0.01
            for start in range(0, n, CHUNK):
                store.update_many({"job_id": j, "progress_percent": base} for j in jobs[start:start + CHUNK])

        writers = [Writer("ours", "evalsha", ours)]

        raw = redis.Redis.from_url(server.url)
        floor_sha = raw.script_load("return 1")

        def floor(n: int) -> None:
            for start in range(0, n, CHUNK):
                pipe = raw.pipeline(transaction=False)
                for _ in range(start, min(n, start + CHUNK)):
                    pipe.evalsha(floor_sha, 0)
                pipe.execute()

        if bull_source is not None:
            bull_sha = raw.script_load(bull_source)
            q = "bull:bench"
            pipe = raw.pipeline(transaction=False)
            for i, _ in enumerate(jobs):
                # the fields a BullMQ job hash holds once a worker runs it
                pipe.hset(f"{q}:{i}", mapping={
                    "name": "video", "data": json.dumps({"paper_id": "31452104"}),
                    "opts": json.dumps({"attempts": 1, "delay": 0}), "timestamp": int(time.time() * 1000),
                    "delay": 0, "priority": 0, "processedOn": int(time.time() * 1000), "atm": 1, "ats": 1})
            pipe.execute()

            def bullmq(n: int) -> None:
                ticks["bullmq"] += 1
                progress = json.dumps({"percent": ticks["bullmq"] * 0.01, "step": DEFAULT_STEPS[0]})
                for start in range(0, n, CHUNK):
                    pipe = raw.pipeline(transaction=False)
                    for i in range(start, min(n, start + CHUNK)):
                        pipe.evalsha(bull_sha, 3, f"{q}:{i}", f"{q}:events", f"{q}:meta", str(i), progress)
                    pipe.execute()

            writers.append(Writer("bullmq", "evalsha", bullmq))

        from rq import Queue
        from rq.job import Job

        rq_queue = Queue("bench", connection=raw)
        rq_jobs = []
        for i in range(len(jobs)):
            job = Job.create("builtins.print", connection=raw, id=f"rq{i}", origin=rq_queue.name)
            job.save()
            rq_jobs.append(job)

        def rq(n: int) -> None:
            ticks["rq"] += 1
            for start in range(0, n, CHUNK):
                pipe = raw.pipeline(transaction=False)
                for job in rq_jobs[start:start + CHUNK]:
                    job.meta["progress"] = {"percent": ticks["rq"] * 0.01, "step": DEFAULT_STEPS[0]}
                    job.connection = pipe  # save_meta's one HSET goes into the pipeline
                    job.save_meta()
                    job.connection = raw
                pipe.execute()

        writers.append(Writer("rq", "hset", rq))
        writers.append(Writer("floor", "evalsha", floor))
        base_sha = None
        if args.baseline is not None:
            base_source = args.baseline.read_text()
            base_sha = raw.script_load(base_source)
            # before issue 14 the script took the percent first and the channels at ARGV[8..11]
            old_layout = "ARGV[1] progress percent" in base_source
            base_jobs = [f"b{i}" for i in range(len(jobs))]
            for j in base_jobs:
                store.create_job(j, "31452104", steps=DEFAULT_STEPS)

            def baseline_call(job_id: str, **update: Any) -> tuple[list[str], list[Any]]:
                keys, call_args = store._update_call(job_id, **update)
                if old_layout:
                    full = [*call_args, *["", "", "", "", "", "0"][len(call_args) - 5:]]
                    call_args = full[4:] + full[:4]
                return keys, call_args

            def base_calls(n: int, **update: Any) -> None:
                for start in range(0, n, CHUNK):
                    pipe = raw.pipeline(transaction=False)
                    for j in base_jobs[start:min(n, start + CHUNK)]:
                        keys, call_args = baseline_call(j, **update)
                        pipe.evalsha(base_sha, len(keys), *keys, *call_args)
                    pipe.execute()

            base_calls(len(base_jobs), status="running", current_step=DEFAULT_STEPS[0])
            ticks["baseline"] = 0

            def baseline(n: int) -> None:
                ticks["baseline"] += 1
                base_calls(n, progress_percent=ticks["baseline"] * 0.01)

            writers.insert(1, Writer("baseline", "evalsha", baseline))

        # commandstats lumps every EVALSHA together, so each writer's rounds run alone
        measure_rounds(client, writers, len(jobs), args.rounds)
        by_name = {w.name: w for w in writers}
        parts = part_writers(raw, store, jobs) + [Writer("update_progress-2.lua", "evalsha", ours)]
        measure_rounds(client, parts, len(jobs), args.rounds)

        # memory of one running job after --updates updates (a fresh job of each system)
        store.create_job("mem", "31452104", steps=DEFAULT_STEPS)
        for i in range(1, args.updates + 1):
            store.update("mem", progress_percent=i * 0.9, status="running")
        ours_mem = memory_of(client, store.keys.job("mem"), store.keys.history("mem"))
        ours_hash = memory_of(client, store.keys.job("mem"))
        list_cap = 100
        list_mem = ours_hash + list_history_bytes(client, store, "mem", list_cap)
        list_cap_small = 20
        list_small = ours_hash + list_history_bytes(client, store, "mem", list_cap_small)
        rq_mem = memory_of(client, rq_jobs[0].key)
        base_mem = None
        if base_sha is not None:  # the same job through the baseline script
            store.create_job("membase", "31452104", steps=DEFAULT_STEPS)
            for i in range(1, args.updates + 1):
                keys, call_args = baseline_call("membase", progress_percent=i * 0.9, status="running")
                raw.evalsha(base_sha, len(keys), *keys, *call_args)
            base_mem = (memory_of(client, store.keys.job("membase")),
                        memory_of(client, store.keys.history("membase")))
        tuned = tuned_memory(client, settings, args.updates)
        bull_mem = None
        if bull_source is not None:
            job_bytes = memory_of(client, "bull:bench:0")
            stream_share = memory_of(client, "bull:bench:events") / len(jobs)
            bull_mem = job_bytes + stream_share

        # update -> reader latency: each reader blocked in its own thread; blocks of 20 alternate
        store.create_job("lat", "31452104", steps=DEFAULT_STEPS)
        store.update("lat", status="running")
        readers: dict[str, Reader] = {"pubsub": PubSubReader(server.url, store.keys.all_events, "lat")}
        if not args.no_sse:
            web, port = start_web(server.url, prefix)
            readers["sse"] = SseReader(port, "lat")
        if bull_source is not None:
            readers["xread"] = XReadReader(server.url, "bull:bench:events")
        for reader in readers.values():
            reader.start()
        time.sleep(0.5)  # every reader blocked on its source
        tick = iter(range(1, 10**9))  # every update a real change: a little more progress
        seq = [0]

        def ours_update(i: int) -> None:
            seq[0] = store.update("lat", progress_percent=next(tick) * 1e-4).seq

        def bull_update(i: int) -> None:
            seq[0] = next(tick)
            raw.evalsha(bull_sha, 3, "bull:bench:0", "bull:bench:events", "bull:bench:meta", "0", seq[0])

        latency: dict[str, list[float]] = {name: [] for name in readers}
        done = 0
        while done < args.readers:
            block = min(20, args.readers - done)
            for name, reader in readers.items():
                latency[name] += reader_latency(bull_update if name == "xread" else ours_update,
                                                lambda i, r=reader: r.wait_seq(seq[0]), block)
            done += block
        for reader in readers.values():
            reader.stop = True
        hub_thread.stop()

        # report
        print(f"redis {client.info('server')['redis_version']} (private, port {server.port}); "
              f"{len(jobs)} jobs per system, {args.rounds} interleaved rounds, medians; "
              f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end (2 cores, shared)")
        if bull_source is None:
            print(f"BullMQ skipped: {bull_version}")
        else:
            print(f"BullMQ {bull_version}: updateProgress-3.lua from the npm package (cache {args.cache})")
        bull = by_name.get("bullmq")
        print(f"{'Redis CPU per update':<34}{'INFO cpu us':>12}{'command us':>12}{'vs BullMQ':>11}")
        for w in writers:
            cpu = median(w.cpu_us)
            ratio = f"{cpu / median(bull.cpu_us):.2f}x" if bull else "-"
            print(f"  {w.name:<32}{cpu:>12.1f}{median(w.cmd_us):>12.1f}{ratio:>11}")
        print("where ours goes (each part adds one command; the same rounds, medians)")
        for w in parts:
            print(f"  {w.name:<32}{median(w.cpu_us):>12.1f}{median(w.cmd_us):>12.1f}")
        print(f"memory of one running job after {args.updates} updates (MEMORY USAGE)")
        print(f"  ours (hash {ours_hash} B + history stream)   {ours_mem:>7} B")
        if base_mem is not None:
            print(f"  baseline (hash {base_mem[0]} B + history stream) {sum(base_mem):>5} B")
        print(f"  ours, history as a LIST capped at {list_cap:<4}     {list_mem:>7} B   (not shipped: changes the public key type)")
        print(f"  ours, history as a LIST capped at {list_cap_small:<4}     {list_small:>7} B   (not shipped: changes the public key type)")
        if bull_mem is not None:
            print(f"  BullMQ (job hash + 1/{len(jobs)} of the event stream) {bull_mem:>7.0f} B")
        print(f"  RQ (job hash, meta pickled)             {rq_mem:>7} B")
        for label, size in tuned:
            print(f"  ours, {label:<34}{size:>7} B   (server settings, not shipped)")
        print(f"update -> reader, ms over {args.readers} updates each   p50      p99")
        for name, values in latency.items():
            if values:
                print(f"  {name:<36}{median(values):>7.2f}{percentile(values, 99):>9.2f}")

        ok = True
        results = []
        if bull is not None:
            cpu_ok = median(by_name["ours"].cpu_us) <= median(bull.cpu_us)
            results.append((cpu_ok, f"CPU per update {median(by_name['ours'].cpu_us):.1f} us vs BullMQ "
                                    f"{median(bull.cpu_us):.1f} us (target <= 1.00x)"))
        mem_ok = ours_mem <= MEMORY_TARGET
        results.append((mem_ok, f"memory of a running job after {args.updates} updates {ours_mem} B "
                                f"(target <= {MEMORY_TARGET} B)"))
        if latency["sse"] and latency["xread"]:
            lat_ok = median(latency["sse"]) <= median(latency["xread"])
            results.append((lat_ok, f"update -> SSE p50 {median(latency['sse']):.2f} ms vs BullMQ XREAD "
                                    f"{median(latency['xread']):.2f} ms (target <= 1.00x)"))
        for good, text in results:
            print(("OK    " if good else "BELOW ") + text)
            ok = ok and good
        print(f"({time.monotonic() - started:.0f} s)")
        return 0 if ok else 1
    finally:
        if web is not None:
            stop_web(web)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
