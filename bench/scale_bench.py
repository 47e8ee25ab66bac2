"""10,000 running jobs, each updated once a second, on one Redis and on a three-node cluster.

    .venv/bin/python bench/scale_bench.py [--jobs 10000] [--seconds 30] [--sample 50] [--no-cluster]

Starts a redis-server of its own (its INFO counts this bench alone) and then a
three-node Redis Cluster (``tests/redis_cluster.py``, as the test suite starts it),
and on each: creates ``--jobs`` jobs, starts ``progress-service web`` (one gevent
worker) with one SSE client on each of ``--sample`` jobs, and for ``--seconds``
seconds sends every job one progress update a second from one pipelined client
(``ProgressStore.update_many``, batches of 25 spread evenly over each second; on
the cluster one pipeline per node and batch).

Prints: updates/s achieved; per-update latency (the round trip of its batch) p50 /
p99 / max; Redis CPU per update and in all (INFO used_cpu_user + used_cpu_sys, per
node on the cluster, with each node's updates/s); Redis memory per job
(used_memory over the jobs); and the SSE clients' delay, from just before an
update's batch is sent to the moment the client has read its event, p50 / p99 /
max, with every event accounted for.

Targets (issue 14): every update sent within its second (>= 95% of the offered
rate); SSE delay p99 < 5 ms on the single Redis; every sampled event delivered.
Each line says OK or BELOW; exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the suite's cluster (tests/redis_cluster.py)

from peer_bench import cpu_seconds, median, percentile  # noqa: E402
from readers import SseReader, start_web, stop_web  # noqa: E402
from redis_cluster import EmbeddedRedisCluster  # noqa: E402

from progress_cli.embedded import EmbeddedRedis  # noqa: E402
from progress_service.config import Settings  # noqa: E402
from progress_service.models import DEFAULT_STEPS  # noqa: E402
from progress_service.store import ProgressStore, connect  # noqa: E402

BATCH = 25  # updates per pipelined round trip: 400 a second at 10,000 jobs
SSE_P99_TARGET_MS = 5.0


def node_clients(store: ProgressStore) -> list[redis.Redis]:
    if store.is_cluster:
        return [node.redis_connection for node in store.client.get_primaries()]
    return [store.client]


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def run(label: str, store: ProgressStore, web_url: str, web_env: dict[str, str], args) -> bool:
    """The whole workload on one store; prints its figures, returns whether targets were met."""
    nodes = node_clients(store)
    mem_before = sum(int(c.info("memory")["used_memory"]) for c in nodes)
    jobs = [f"s{i}" for i in range(args.jobs)]
    created = time.monotonic()
    for j in jobs:
        store.create_job(j, "31452104", steps=DEFAULT_STEPS)
    for start in range(0, len(jobs), BATCH):
        store.update_many({"job_id": j, "status": "running", "current_step": DEFAULT_STEPS[1]}
                          for j in jobs[start:start + BATCH])
    created = time.monotonic() - created

    web, port = start_web(web_url, store.keys.prefix, **web_env)
    readers: dict[str, SseReader] = {}
    try:
        step = max(1, len(jobs) // max(1, args.sample))
        for j in jobs[::step][:args.sample]:
            readers[j] = SseReader(port, j)
            readers[j].start()
        first = {j: store.get(j)["seq"] for j in readers}
        for j, reader in readers.items():
            reader.wait_seq(first[j], timeout=30)

        sent: dict[tuple[str, int], float] = {}  # (sampled job, seq) -> when its batch was sent
        latencies: list[float] = []
        batches = [jobs[i:i + BATCH] for i in range(0, len(jobs), BATCH)]
        slot = 1.0 / len(batches)
        cpu_before = [cpu_seconds(c) for c in nodes]
        calls_before = [evalsha_calls(c) for c in nodes]
        begin = time.perf_counter()
        updates = 0
        for second in range(args.seconds):
            percent = (second + 1) * 90 / args.seconds
            for b, batch in enumerate(batches):
                due = begin + second + b * slot
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                results = store.update_many({"job_id": j, "progress_percent": percent} for j in batch)
                rtt = (time.perf_counter() - t0) * 1000
                latencies.extend([rtt] * len(batch))
                updates += len(batch)
                for j, res in zip(batch, results, strict=True):
                    if j in readers:
                        sent[(j, res.seq)] = t0
        elapsed = max(time.perf_counter() - begin, float(args.seconds))
        cpu = [cpu_seconds(c) - before for c, before in zip(nodes, cpu_before, strict=True)]
        calls = [evalsha_calls(c) - before for c, before in zip(nodes, calls_before, strict=True)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                seq in readers[j].arrived for j, seq in sent):
            time.sleep(0.05)
        delays = [(readers[j].arrived[seq] - t0) * 1000 for (j, seq), t0 in sent.items()
                  if seq in readers[j].arrived]
        mem_after = sum(int(c.info("memory")["used_memory"]) for c in nodes)
    finally:
        for reader in readers.values():
            reader.stop = True
        stop_web(web)

    rate = updates / elapsed
    offered = len(jobs)
    print(f"== {label}: {len(jobs)} jobs (created and started in {created:.1f} s), "
          f"{args.seconds} s at 1 update/s each, batches of {BATCH}")
    print(f"  updates/s          {rate:>10,.0f}   (offered {offered:,}/s; {updates:,} in {elapsed:.1f} s)")
    print(f"  update latency ms  p50 {median(latencies):6.2f}   p99 {percentile(latencies, 99):6.2f}"
          f"   max {max(latencies):6.2f}   (its batch's round trip)")
    total_cpu = sum(cpu)
    print(f"  Redis CPU          {total_cpu / updates * 1e6:6.1f} us per update, "
          f"{total_cpu / elapsed * 100:5.1f}% of a core in all")
    if len(nodes) > 1:
        for i, (c_s, n) in enumerate(zip(cpu, calls, strict=True)):
            print(f"    node {i + 1}: {n / elapsed:8,.0f} scripts/s, {c_s / elapsed * 100:5.1f}% of a core")
    print(f"  Redis memory       {(mem_after - mem_before) / len(jobs):6.0f} B per job (used_memory)")
    missing = len(sent) - len(delays)
    print(f"  SSE delay ms       p50 {median(delays):6.2f}   p99 {percentile(delays, 99):6.2f}"
          f"   max {max(delays) if delays else float('nan'):6.2f}   ({len(readers)} clients, "
          f"{len(delays)}/{len(sent)} events, missing {missing})")
    ok = True
    checks = [(rate >= 0.95 * offered, f"{label}: {rate:,.0f} updates/s of {offered:,} offered (target >= 95%)"),
              (missing == 0, f"{label}: every sampled event delivered (missing {missing})")]
    if not store.is_cluster:
        p99 = percentile(delays, 99)
        checks.append((p99 < SSE_P99_TARGET_MS, f"{label}: SSE delay p99 {p99:.2f} ms (target < 5 ms)"))
    for good, text in checks:
        print(("  OK    " if good else "  BELOW ") + text)
        ok = ok and good
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--sample", type=int, default=50, help="jobs with an SSE client")
    ap.add_argument("--no-cluster", action="store_true", help="skip the three-node cluster")
    args = ap.parse_args()

    started = time.monotonic()
    print(f"load average {os.getloadavg()[0]:.2f} at start (2 cores, shared)")
    tmp = tempfile.mkdtemp(prefix="scale-bench-")
    ok = True
    try:
        server = EmbeddedRedis(base_dir=tmp)
        try:
            settings = Settings.from_env({"PROGRESS_REDIS_URL": server.url, "PROGRESS_KEY_PREFIX": "scale"})
            store = ProgressStore(connect(settings), settings)
            ok = run(f"one Redis {store.client.info('server')['redis_version']}", store, server.url, {}, args) and ok
            store.client.close()
        finally:
            server.stop()
        if not args.no_cluster:
            with EmbeddedRedisCluster(3, base_dir=tmp) as cluster:
                env = {"PROGRESS_REDIS_URL": cluster.url, "PROGRESS_REDIS_CLUSTER": "1",
                       "PROGRESS_KEY_PREFIX": "scale"}
                settings = Settings.from_env(env)
                store = ProgressStore(connect(settings), settings)
                ok = run("three-node cluster", store, "redis://127.0.0.1:1/0",
                         {"PROGRESS_REDIS_URL": cluster.url, "PROGRESS_REDIS_CLUSTER": "1"}, args) and ok
                store.client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end; {time.monotonic() - started:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
