"""Capture the parser's fixtures from real processes (run it again to refresh them).

    .venv/bin/python tests/data/capture_fixtures.py

- ``tqdm_run.bin``: the raw stderr of a real tqdm loop (redraws with ``\\r``).
- ``interleaved.bin``: one pipe carrying a small pipeline's stdout *and* stderr: STEP and
  PROGRESS lines, a JSON line, Latin-1 bytes that are invalid UTF-8, and tqdm bars.
- ``video_run.bin``: the video pipeline itself (default size), stdout and stderr in one pipe.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

TQDM_RUN = """
import sys, time
from tqdm import tqdm
for _ in tqdm(range(40), desc="frames", mininterval=0, file=sys.stderr):
    time.sleep(0.005)
"""

INTERLEAVED = """
import json, sys, time
from tqdm import tqdm
for i, step in enumerate(["download", "transform", "upload"], start=1):
    print(f"STEP {i}/3 {step}", flush=True)
    for _ in tqdm(range(12), mininterval=0, file=sys.stderr):
        time.sleep(0.003)
    print(f"PROGRESS {i * 33.3:.1f} {step} done", flush=True)
    if step == "transform":
        print(json.dumps({"message": "half-way there"}), flush=True)
        sys.stdout.buffer.write("caf\\u00e9 cr\\u00e8me (latin-1)\\n".encode("latin-1"))
        sys.stdout.flush()
print("PROGRESS banana", flush=True)
print(json.dumps({"result": {"answer": 42}}), flush=True)
"""


def capture(code: str, *, merge: bool) -> bytes:
    done = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        check=True,
    )
    return done.stdout if merge else done.stderr


def capture_video_run() -> bytes:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-m", "worker.pipelines.video", "34265844", "--out", out],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            check=True,
        )
    return done.stdout.replace(out.encode(), b"/tmp/video-run")


def main() -> None:
    (HERE / "tqdm_run.bin").write_bytes(capture(TQDM_RUN, merge=False))
    (HERE / "interleaved.bin").write_bytes(capture(INTERLEAVED, merge=True))
    (HERE / "video_run.bin").write_bytes(capture_video_run())


if __name__ == "__main__":
    main()
