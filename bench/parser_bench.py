"""How many output lines per second go through parse_line + ProgressTracker.

    .venv/bin/python bench/parser_bench.py [--lines N] [--repeat R]

The lines are a realistic mix for one job of the video pipeline: tqdm bars drawn by
tqdm's own ``format_meter`` (most of the output), ordinary log lines, STEP and PROGRESS
lines, JSON lines and a few refused lines. The floor is a bare ``str.split()`` over the
same lines in the same run; the ratio says how many times slower the parser is than
doing almost nothing per line. Target: >= 200,000 lines/s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402
from tqdm import tqdm  # noqa: E402

from worker.parser import ProgressTracker, parse_line  # noqa: E402

STEPS = ["fetch-paper", "generate-script", "generate-audio", "generate-videos", "assemble-video"]
TARGET = 200_000


def one_job(rng: random.Random) -> list[str]:
    """The output lines of one job: five steps, a bar per step, logs in between."""
    lines: list[str] = []
    for number, step in enumerate(STEPS, start=1):
        lines.append(f"STEP {number}/{len(STEPS)} {step}")
        total = rng.randint(150, 400)
        for n in range(0, total + 1, rng.randint(1, 3)):
            lines.append(
                tqdm.format_meter(n, total, n / 300.0, ncols=80, prefix=step, unit="frame")
            )
            roll = rng.random()
            if roll < 0.25:
                lines.append(f"INFO worker: wrote frame_{n:05d}.png ({rng.randint(9, 60)} kB)")
            elif roll < 0.30:
                lines.append(
                    f"PROGRESS {20 * (number - 1) + 20 * n / total:.1f} {step} {n}/{total}"
                )
            elif roll < 0.32:
                lines.append(json.dumps({"message": f"{step}: {n} of {total} done"}))
            elif roll < 0.33:
                lines.append("PROGRESS banana")
            elif roll < 0.34:
                lines.append("Traceback-free warning: something odd but harmless happened")
    lines.append(json.dumps({"result": {"video_url": "file:///tmp/x.mp4"}}))
    return lines


def run_parser(jobs: list[list[str]]) -> int:
    updates = 0
    for lines in jobs:
        tracker = ProgressTracker(STEPS)
        feed = tracker.feed
        for line in lines:
            parsed = parse_line(line)
            if parsed is not None and feed(parsed) is not None:
                updates += 1
    return updates


def run_floor(jobs: list[list[str]]) -> int:
    words = 0
    for lines in jobs:
        for line in lines:
            words += len(line.split())
    return words


def best_rate(function, jobs: list[list[str]], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function(jobs)
        best = min(best, time.perf_counter() - started)
    return count / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000, help="about this many lines")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    rng = random.Random(42)
    jobs: list[list[str]] = []
    count = 0
    while count < args.lines:
        job = one_job(rng)
        jobs.append(job)
        count += len(job)
    bars = sum(1 for job in jobs for line in job if "%|" in line)
    parser_rate = best_rate(run_parser, jobs, count, args.repeat)
    floor_rate = best_rate(run_floor, jobs, count, args.repeat)
    print(
        f"lines: {count:,} in {len(jobs)} jobs ({bars / count:.0%} tqdm bars), best of {args.repeat}"
    )
    print(f"parse_line + ProgressTracker.feed: {parser_rate:>12,.0f} lines/s")
    print(f"floor (str.split per line):        {floor_rate:>12,.0f} lines/s")
    print(f"ratio (floor / parser):            {floor_rate / parser_rate:>12.1f}x")
    return _common.verdict(f"target {TARGET:,} lines/s", parser_rate >= TARGET, "ok", "BELOW TARGET")


if __name__ == "__main__":
    sys.exit(main())
