"""From a pipeline's ``STEP`` line to a pub/sub subscriber: the runner against a floor.

Both paths start from the same child, which prints ``STEP s1`` .. ``STEP sN`` on
stdout, ``--gap-ms`` apart, and notes CLOCK_MONOTONIC just before each write; and
both end at the same subscriber, a process of its own that notes CLOCK_MONOTONIC
when each message arrives (the clock is one for every process of the machine).

- ours: ``worker.runner.run_command`` reads the child (LineSplitter, parse_line,
  ProgressTracker), writes each step change through the Throttle (a step change goes
  at once, whatever PROGRESS_MIN_INTERVAL says) into the Lua update script, which
  PUBLISHes the event on the job's channel;
- floor: a bare parent reads the child's lines and PUBLISHes each one as it comes.

The two alternate for ``--rounds`` rounds (a busy machine slows both alike); the
figures are over every step of every round. Targets: ours p50 <= 2 ms, p99 <= 10 ms.

    python bench/latency_bench.py [--steps 200] [--rounds 3] [--gap-ms 2]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent))

import _common  # noqa: E402

from progress_service import ProgressStore, Settings  # noqa: E402
from progress_service.store import connect  # noqa: E402
from worker.runner import run_command  # noqa: E402

CHILD = """
import json, sys, time
n, gap, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(0.2)  # let the reader settle
sent = []
write, flush, clock = sys.stdout.write, sys.stdout.flush, time.monotonic_ns
for i in range(1, n + 1):
    sent.append(clock())
    write(f"STEP s{i}\\n")
    flush()
    time.sleep(gap)
with open(out, "w") as f:
    json.dump(sent, f)
"""


def subscriber_main(url: str, channel: str, n: int, out: str, mode: str) -> None:
    """A subscriber process: note the arrival time of steps 1..n, then write them to ``out``."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    print("ready", flush=True)
    got: dict[int, int] = {}
    deadline = time.monotonic() + 60 + n * 0.05
    while len(got) < n and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        now = time.monotonic_ns()
        data = message["data"].decode()
        if mode == "ours":
            step = json.loads(data).get("current_step")
        else:
            step = data.split()[-1] if data.startswith("STEP ") else None
        if step and step.startswith("s"):
            got.setdefault(int(step[1:]), now)
    with open(out, "w") as f:
        json.dump(got, f)


def start_subscriber(url: str, channel: str, n: int, out: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE), "--subscribe", url, channel, str(n), str(out),
                             mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def latencies(sent_file: Path, got_file: Path) -> list[float]:
    sent = json.loads(sent_file.read_text())
    got = {int(k): v for k, v in json.loads(got_file.read_text()).items()}
    missing = [i for i in range(1, len(sent) + 1) if i not in got]
    if missing:
        raise SystemExit(f"the subscriber missed {len(missing)} steps, e.g. {missing[:5]}")
    return [(got[i] - sent[i - 1]) / 1e6 for i in range(1, len(sent) + 1)]


def child_argv(n: int, gap: float, sent_file: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, str(n), str(gap), str(sent_file)]


def run_ours(store: ProgressStore, settings: Settings, url: str, n: int, gap: float,
             folder: Path, round_no: int) -> list[float]:
    job_id = f"lat-{round_no}-{uuid.uuid4().hex[:6]}"
    steps = [f"s{i}" for i in range(1, n + 1)]
    store.create_job(job_id, "bench", steps=steps, pipeline="bench")
    sent, got = folder / f"ours-sent-{round_no}", folder / f"ours-got-{round_no}"
    sub = start_subscriber(url, store.keys.events(job_id), n, got, "ours")
    outcome = run_command(store, job_id, child_argv(n, gap, sent), steps=steps, settings=settings)
    sub.wait(60)
    if outcome.status != "completed":
        raise SystemExit(f"the bench job ended {outcome.status}: {outcome.error}")
    return latencies(sent, got)


def run_floor(client: redis.Redis, url: str, prefix: str, n: int, gap: float, folder: Path,
              round_no: int) -> list[float]:
    channel = f"{prefix}:floor:{round_no}"
    sent, got = folder / f"floor-sent-{round_no}", folder / f"floor-got-{round_no}"
    sub = start_subscriber(url, channel, n, got, "floor")
    child = subprocess.Popen(child_argv(n, gap, sent), stdout=subprocess.PIPE)
    assert child.stdout is not None
    for line in iter(child.stdout.readline, b""):
        client.publish(channel, line.rstrip(b"\n"))
    child.wait()
    sub.wait(60)
    return latencies(sent, got)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscribe":
        url, channel, n, out, mode = sys.argv[2:7]
        subscriber_main(url, channel, int(n), out, mode)
        return
    ap = _common.arguments(__doc__)
    ap.add_argument("--steps", type=int, default=200, help="STEP lines per round (>= 200 for the target)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each path, alternating")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="pause between two STEP lines")
    args = ap.parse_args()

    url, prefix = _common.redis_url(), _common.key_prefix()
    settings = Settings.from_env({"REDIS_URL": url, "PROGRESS_KEY_PREFIX": prefix,
                                  "PROGRESS_MIN_INTERVAL": os.environ.get("PROGRESS_MIN_INTERVAL", "1.0")})
    store = ProgressStore(connect(settings), settings)
    client = redis.Redis.from_url(url)
    gap = args.gap_ms / 1000
    ours: list[float] = []
    floor: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
            folder = Path(tmp)
            for round_no in range(args.rounds):
                floor += run_floor(client, url, prefix, args.steps, gap, folder, round_no)
                ours += run_ours(store, settings, url, args.steps, gap, folder, round_no)
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)

    def line(name: str, xs: list[float]) -> str:
        return (f"{name:<36} p50 {percentile(xs, 50):6.3f} ms   p99 {percentile(xs, 99):6.3f} ms"
                f"   mean {statistics.fmean(xs):6.3f} ms   max {max(xs):6.3f} ms")

    print(f"{args.rounds} rounds x {args.steps} steps, {args.gap_ms:g} ms apart; Redis at {url}")
    print(line("floor: bare read + PUBLISH", floor))
    print(line("ours: runner -> Lua update -> event", ours))
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    print(f"ratio ours/floor: p50 {p50 / percentile(floor, 50):.2f}x   "
          f"p99 {p99 / percentile(floor, 99):.2f}x")
    verdict = "met" if p50 <= 2.0 and p99 <= 10.0 else "MISSED"
    print(f"targets p50 <= 2 ms, p99 <= 10 ms: {verdict}")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
