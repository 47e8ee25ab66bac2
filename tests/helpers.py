"""The plain functions, classes and constants the test modules share, imported as
``from helpers import wait_until`` (tests/ is on ``sys.path``, as for ``tcp_proxy``).
conftest.py imports from here what its fixtures need; fixtures stay there.

- ``wait_until``: a poll with a deadline, in place of a fixed sleep.
- ``read_pids``: the process ids a test command wrote to a file.
- ``tree_script``: a command that starts grandchildren, writes their pids, and waits.
- ``cli_env``: the environment of a ``progress-service`` subprocess.
- ``worker_env``, ``work_burst``: an RQ job function's environment, and a burst of
  ``ProgressSimpleWorker`` in the test's own thread.
- ``write_worker_launcher``: a worker that knows a test's own pipelines.
- ``unavailable``: skip for want of a backend (fail in strict mode).
- ``embedded_redis``: a redis-server of the test's own, for a block.
- ``RestartableRedis``: a redis-server of a test's own to crash and restart.
- ``CLOSED_REDIS_URL``, ``CLOSED_DATABASE_URL``: ports where nothing answers.
- ``REPO``: the repository's root.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from pathlib import Path

import pytest

STRICT = os.environ.get("PROGRESS_TEST_STRICT") == "1"

CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
CLOSED_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/postgres"
REPO = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> None:
    """Skip the test for want of a backend; in strict mode fail it instead."""
    if STRICT:
        pytest.fail(f"{reason} (PROGRESS_TEST_STRICT=1: a missing backend fails)", pytrace=False)
    pytest.skip(reason)


def wait_until(predicate, timeout=10.0, interval=0.02, what=None):
    """Call ``predicate`` every ``interval`` seconds until it returns something true, for at
    most ``timeout`` seconds: a poll with a deadline, not a sleep.

    Returns that true value, or at the deadline the last false one, for the caller to
    assert on. Given ``what`` (what is awaited), a passed deadline fails the test here,
    saying what it waited for and how long.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    value = predicate()
    if value or what is None:
        return value
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_pids(path: Path) -> list[int] | None:
    """The process ids a test command wrote to ``path`` on one line, or None until it has
    (the line is complete once it ends with a newline)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return [int(x) for x in text.split()] if text.endswith("\n") else None


def tree_script(step_line: str, progress_line: str, escape: bool = False) -> str:
    """Python source of a command that starts a grandchild in its process group (``stay``)
    and, with ``escape``, one that leaves the group (setsid); prints ``step_line`` and
    ``progress_line``; writes "own pid, grandchild[, escaped grandchild]" to argv[1] (whole
    once it ends with a newline: see ``read_pids``); then waits two minutes."""
    sleeper = '[sys.executable, "-c", "import time; time.sleep(120)"]'
    pids = "{os.getpid()} {stay.pid}"
    lines = ["import os, subprocess, sys, time", f"stay = subprocess.Popen({sleeper})"]
    if escape:
        lines.append(f"escape = subprocess.Popen({sleeper}, start_new_session=True)")
        pids += " {escape.pid}"
    return "\n".join([
        *lines,
        f"print({step_line!r}, flush=True)",
        f"print({progress_line!r}, flush=True)",
        'with open(sys.argv[1] + ".tmp", "w") as f:',
        '    f.write(f"' + pids + '\\n")',
        'os.rename(sys.argv[1] + ".tmp", sys.argv[1])',
        "time.sleep(120)",
    ]) + "\n"


def cli_env(settings, **values: str) -> dict[str, str]:
    """The environment of a ``progress-service`` subprocess run by a test.

    The caller's environment less every ``PROGRESS_*``, ``VIDEO_PIPELINE*``, ``REDIS_URL``
    and ``DATABASE_URL``; then this test's Redis, key prefix and queue, a closed
    PostgreSQL port, a short write interval and the repository on ``PYTHONPATH``; then
    ``values``, which add to or override all of that.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROGRESS_", "VIDEO_PIPELINE")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=CLOSED_DATABASE_URL,
        PROGRESS_KEY_PREFIX=settings.key_prefix,
        PROGRESS_QUEUE=settings.queue_name,
        PROGRESS_MIN_INTERVAL="0.05",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        PYTHONUNBUFFERED="1",
    )
    env.update(values)
    return env


def worker_env(settings, output_dir: Path, **values: str) -> dict[str, str]:
    """What the job function reads from the environment (set it with monkeypatch): this
    test's prefix, queue and output folder, quick throttle and staleness, fast videos."""
    return {
        "REDIS_URL": settings.redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_QUEUE": settings.queue_name,
        "PROGRESS_MIN_INTERVAL": "0.05",
        "PROGRESS_STALE_AFTER": "2",
        "PROGRESS_WORKER_LOST_AFTER": "3",
        "PROGRESS_OUTPUT_DIR": str(output_dir),
        "DATABASE_URL": CLOSED_DATABASE_URL,
        "VIDEO_PIPELINE_FAST": "1",
        **values,
    }


def work_burst(settings, conn, store, *, with_scheduler: bool = False) -> None:
    """A burst of ProgressSimpleWorker in this thread; the signal handlers RQ sets are undone.
    ``with_scheduler``: RQ's scheduler first queues the scheduled jobs that are due."""
    import signal

    from worker.jobs import ProgressSimpleWorker

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    try:
        worker = ProgressSimpleWorker([settings.queue_name], connection=conn, store=store,
                                      name=f"{settings.key_prefix}-{time.monotonic_ns()}")
        worker.work(burst=True, with_scheduler=with_scheduler)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


WORKER_LAUNCHER = """
import sys
from progress_service.pipelines import PIPELINES, Pipeline

SOURCES = {sources!r}

def command_for(source):
    return lambda paper_id, out_dir, job_id: [sys.executable, "-c", source, out_dir + "/pids"]

for name, source in SOURCES.items():
    PIPELINES[name] = Pipeline(name=name, steps=("a", "b"), command=command_for(source))

from progress_cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_worker_launcher(folder: Path, sources: dict[str, str]) -> Path:
    """A script, written to ``folder``, that registers a pipeline of steps a, b for each
    ``name: source`` in ``sources`` (``source`` run by Python with its output folder's
    ``pids`` file as argv[1]), then runs ``progress-service`` with its own arguments:
    ``python launch_worker.py worker ...`` is a worker that knows the test's pipelines."""
    launcher = folder / "launch_worker.py"
    launcher.write_text(textwrap.dedent(WORKER_LAUNCHER).format(sources=sources))
    return launcher


@contextlib.contextmanager
def embedded_redis(binary: str | None, why: str):
    """The URL of an embedded redis-server, stopped after the block; where none can start,
    a skip (in strict mode a failure) that says ``why`` a server was wanted."""
    if binary is None:
        unavailable(f"{why}, and there is no redis-server to start")
    from progress_cli.embedded import EmbeddedRedis, EmbeddedServerError

    try:
        server = EmbeddedRedis(binary=binary)
    except EmbeddedServerError as exc:
        unavailable(f"{why}, and an embedded one failed: {exc}")
    with server:
        yield server.url


class RestartableRedis:
    """A throwaway redis-server of the test's own (a free port, a folder of its own) that the
    test kills (SIGKILL, as a crash would) and starts again on the same port: empty, or, given
    ``aof_dir``, from the append-only file it keeps there (``appendfsync everysec``, as
    compose.yaml runs Redis)."""

    def __init__(self, binary: str, aof_dir: Path | None = None) -> None:
        from progress_cli.embedded import EmbeddedRedis

        persistence = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(aof_dir)]
                       if aof_dir is not None else ["--save", "", "--appendonly", "no"])
        self._start = lambda port=None: EmbeddedRedis(port=port, binary=binary, extra_args=persistence)
        self.server = self._start()
        self.url = self.server.url

    def crash_and_restart(self) -> None:
        port = self.server.port
        self.server.process.kill()
        self.server.stop()
        self.server = self._start(port)

    def stop(self) -> None:
        self.server.stop()


def subscribed(client, *channels: str) -> bool:
    """Whether the server counts a subscriber on each of ``channels`` (``PUBSUB NUMSUB``):
    a ``pubsub.subscribe()`` has taken effect, and a message published now reaches it."""
    return all(int(count) > 0 for _, count in client.pubsub_numsub(*channels))
