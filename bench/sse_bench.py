"""10,000 concurrent SSE clients on ONE web process: does every client get every update, and how fast?

    .venv/bin/python bench/sse_bench.py [--clients 10000] [--updates 40] [--interval 0.25]

Starts ``progress-service web``'s gunicorn (one gevent worker) on a free
loopback port against the Redis at ``REDIS_URL`` (default 127.0.0.1:6379),
under a key prefix of its own (deleted afterwards). A gevent client opens the
streams on raw sockets; the bench then drives one job's updates through the
store and measures, per client and update, the time from just before the
update is sent to Redis to the moment the client has read its event.

The floor, measured in the same run: the same updates seen by a plain Redis
pub/sub subscriber in this process (no web server in between).

The bench raises its open-file limit (and so the web process's, which inherits it)
to the hard limit: each client is a socket on both sides. It prints the web
process's memory per client (its RSS with every stream open, less its RSS before
the first, over the clients).

Targets: every client receives every update; p99 delivery <= 250 ms; the web
process holds at most 4 Redis connections (counted from its sockets in /proc
and from CLIENT LIST). Exit status 1 if a target is missed. Bounded: the whole
run is aborted after --max-seconds.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent import socket  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402

from progress_cli.embedded import find_free_port  # noqa: E402
from progress_cli.web_commands import gunicorn_argv  # noqa: E402
from progress_service.config import Settings  # noqa: E402
from progress_service.models import DEFAULT_STEPS  # noqa: E402
from progress_service.store import ProgressStore  # noqa: E402

ID_LINE = re.compile(rb"\nid: (\d+)\n")
P99_TARGET_MS = 250.0
MAX_CONNECTIONS = 4


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


class Client:
    """One SSE stream on a raw socket: remembers when each seq arrived."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.arrived: dict[int, float] = {}
        self.closed = False
        self.error: str | None = None
        self.received = 0
        self.stage = "connecting"

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.stage = "sending"
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            pending = b""
            self.stage = "reading"
            while True:
                data = sock.recv(65536)
                now = time.perf_counter()
                self.received += len(data)
                if not data:
                    self.closed = True
                    return
                pending += data
                last_end = 0
                for match in ID_LINE.finditer(pending):
                    self.arrived.setdefault(int(match.group(1)), now)
                    last_end = match.end()
                pending = pending[last_end:] if last_end else pending[-64:]
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            self.error = f"{type(exc).__name__}: {exc}"


def web_worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def sockets_to(pid: int, port: int) -> int:
    """TCP connections from ``pid`` to ``port`` on loopback, from /proc (no psutil)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if remote_port == port and parts[3] == "01" and parts[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_file_limit(needed: int) -> None:
    """Open files enough for ``needed`` sockets, up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise SystemExit(f"the open-file limit is {soft}, {needed} are needed: lower --clients")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between updates")
    parser.add_argument("--max-seconds", type=float, default=180)
    args = parser.parse_args()
    raise_file_limit(args.clients + 200)
    print(f"load average {os.getloadavg()[0]:.2f} at start (2 cores, shared)")

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_url, "PROGRESS_KEY_PREFIX": prefix,
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres", "PYTHONPATH": str(ROOT)}
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = ProgressStore(client, settings)
    port = find_free_port()
    log = open(f"/tmp/sse-bench-{port}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(gunicorn_argv("127.0.0.1", port, 1, worker_connections=args.clients + 100),
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    cleanup: list = []
    timeout = gevent.Timeout(args.max_seconds)
    timeout.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/jobs?limit=1", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"gunicorn did not start; see {log.name}") from None
                gevent.sleep(0.1)
        worker = web_worker_pid(server.pid)
        rss_before = rss_bytes(worker)

        job_id = "bench-job"
        store.create_job(job_id, "31452104", steps=DEFAULT_STEPS)
        store.update(job_id, status="running", current_step=DEFAULT_STEPS[0], progress_percent=0.5)
        first_seq = store.get(job_id)["seq"]

        # The floor: a plain pub/sub subscriber, in this process.
        floor_arrived: dict[int, float] = {}
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(store.keys.events(job_id))

        def listen_floor():
            for message in pubsub.listen():
                if message["type"] == "message":
                    floor_arrived[json.loads(message["data"])["seq"]] = time.perf_counter()

        floor = gevent.spawn(listen_floor)
        cleanup.append(floor.kill)

        clients = [Client(port, f"/api/v1/jobs/{job_id}/events") for _ in range(args.clients)]
        started = time.perf_counter()
        greenlets = [gevent.spawn(c.run) for c in clients]
        while sum(first_seq in c.arrived for c in clients) < len(clients):
            broken = [c.error for c in clients if c.error]
            if broken:
                stuck = [c for c in clients if first_seq not in c.arrived]
                stages = {st: sum(c.stage == st for c in stuck) for st in ("connecting", "sending", "reading")}
                raise SystemExit(f"{len(broken)} clients failed, e.g. {broken[0]}; stuck: {stages},"
                                 f" bytes {[c.received for c in stuck[:5]]}")
            gevent.sleep(0.05)
        connect_s = time.perf_counter() - started
        rss_open = rss_bytes(worker)
        print(f"{args.clients} streams open in {connect_s:.2f} s; web process RSS {rss_before / 2**20:.0f} MB"
              f" -> {rss_open / 2**20:.0f} MB: {(rss_open - rss_before) / args.clients / 1024:.1f} KB per client")

        sent: dict[int, float] = {}
        cpu_web, cpu_bench = cpu_seconds(worker), time.process_time()
        max_sockets = max_named = 0
        prefix_name = f"{prefix}.web.{worker}."
        for i in range(1, args.updates + 1):
            percent = round(0.5 + i * 98 / args.updates, 2)
            step = DEFAULT_STEPS[min(int(percent // 20), len(DEFAULT_STEPS) - 1)]
            t0 = time.perf_counter()
            result = store.update(job_id, progress_percent=percent, current_step=step, message=f"update {i}")
            sent[result.seq] = t0
            gevent.sleep(args.interval)
            max_sockets = max(max_sockets, sockets_to(worker, redis_port))
            named = [c for c in client.client_list() if c.get("name", "").startswith(prefix_name)]
            max_named = max(max_named, len(named))
        t0 = time.perf_counter()
        result = store.update(job_id, progress_percent=100)
        sent[result.seq] = t0
        gevent.joinall(greenlets, timeout=30)
        cpu_web, cpu_bench = cpu_seconds(worker) - cpu_web, time.process_time() - cpu_bench
        floor.kill()
        pubsub.close()

        latencies = [(c.arrived[seq] - t) * 1000 for c in clients for seq, t in sent.items() if seq in c.arrived]
        floor_ms = [(floor_arrived[seq] - t) * 1000 for seq, t in sent.items() if seq in floor_arrived]
        expected = len(clients) * len(sent)
        missing = expected - len(latencies)
        closed = sum(c.closed for c in clients)
        errors = [c.error for c in clients if c.error]
        p99 = percentile(latencies, 99)
        floor_p99 = percentile(floor_ms, 99)

        print(f"updates sent: {len(sent)} (every {args.interval} s); deliveries: {len(latencies)}/{expected}"
              f" (missing {missing}); streams closed after 'completed': {closed}/{len(clients)}")
        print(f"SSE delivery ms:   p50 {statistics.median(latencies):7.1f}   p99 {p99:7.1f}"
              f"   max {max(latencies):7.1f}")
        print(f"floor (pub/sub) ms: p50 {statistics.median(floor_ms):7.1f}   p99 {floor_p99:7.1f}"
              f"   max {max(floor_ms):7.1f}")
        print(f"ratio p99 SSE / p99 floor: {p99 / floor_p99:.1f}x")
        deliveries = max(1, len(latencies))
        print(f"CPU per delivery: web process {cpu_web / deliveries * 1e6:.0f} us, this bench's clients"
              f" {cpu_bench / deliveries * 1e6:.0f} us (both on the same {os.cpu_count()} cores)")
        print(f"Redis connections held by the web worker (pid {worker}): max {max_sockets} sockets,"
              f" max {max_named} in CLIENT LIST")
        ok = (missing == 0 and not errors and closed == len(clients) and p99 <= P99_TARGET_MS
              and max_sockets <= MAX_CONNECTIONS and max_named <= MAX_CONNECTIONS)
        print(("PASS" if ok else "FAIL") + f": every update to every client, p99 <= {P99_TARGET_MS:.0f} ms,"
              f" <= {MAX_CONNECTIONS} Redis connections")
        return 0 if ok else 1
    except gevent.Timeout:
        print(f"FAIL: the bench did not finish within {args.max_seconds} s")
        return 1
    finally:
        timeout.cancel()
        for undo in cleanup:
            undo()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        _common.drop_keys(client, f"{prefix}*")
        client.close()


if __name__ == "__main__":
    sys.exit(main())
