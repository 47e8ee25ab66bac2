"""``progress-service demo``: the whole stack on one machine, one job, a live bar.

1. Where ``REDIS_URL`` / ``DATABASE_URL`` are unset, starts embedded, real Redis
   and PostgreSQL servers in a temporary folder, on free ports (and says so);
2. ``db upgrade``;
3. starts ``progress-service web`` and ``progress-service worker`` as child
   processes, each in a process group of its own, pointed at those servers;
4. submits the video job of PAPER_ID (the first bundled paper by default) and
   draws its progress bar from pub/sub;
5. prints the video's path and whether PostgreSQL holds the job's row;
6. with ``--serve`` keeps the page up until Ctrl-C;
7. on the way out, whatever happened (Ctrl-C, SIGTERM, and SIGHUP when its
   terminal closes, included), stops every process and server it started, checks
   none is left, and deletes the folder.

Exit status: the job's outcome (0 completed, 1 failed, 2 canceled), else the
tool's own (``EPILOG``): 64 a bad command line or an unknown paper, 69 a server
or process it started could not be started, died, or could not be stopped, 78 a
malformed REDIS_URL / DATABASE_URL, 124 ``--timeout`` passed, 130 interrupted
before the job ended.
"""

from __future__ import annotations

import _thread
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import psutil

from progress_cli import exit_codes
from progress_service import Settings
from progress_service.config import redacted_url
from progress_service.errors import BackendUnavailable, ProgressError
from worker.process_tree import group_members, process_alive

DEMO_MIN_INTERVAL = "0.2"  # seconds between two percent-only writes: a bar that visibly moves
START_TIMEOUT = 60.0  # seconds for the web server to answer /healthz
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
MIRROR_WAIT = 10.0  # seconds to wait for the worker's mirror thread to copy the job

EPILOG = """\
Starts whatever is missing: with REDIS_URL and DATABASE_URL unset, embedded Redis and
PostgreSQL servers in a temporary folder (with them set, those servers are used and
nothing is started for them); then db upgrade, the web server and a worker; submits
one video job and draws its bar. Everything it started is stopped on exit, Ctrl-C,
SIGTERM and SIGHUP (its terminal closed) included. PROGRESS_MIN_INTERVAL defaults
to 0.2 here, so the bar moves visibly.

exit status:
  0    the job completed (with --serve: and then Ctrl-C)
  1    the job failed
  2    the job was canceled
  64   a bad command line or an unknown paper
  69   a server or process it needs could not be started or died, or one it
       started could not be stopped
  78   REDIS_URL or DATABASE_URL is malformed
  124  --timeout passed before the job ended
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP) before the job ended

examples:
  progress-service demo                      # the first bundled paper
  progress-service demo 34265844 --serve     # then keep the page up until Ctrl-C
  progress-service demo --port 8000 --serve
  REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgresql://postgres@127.0.0.1/postgres \\
      progress-service demo                  # your own servers, no embedded ones"""


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole stack, one job, a live bar (embedded servers where no URLs are set)",
        description="Run the whole stack on this machine and one video job with a live progress "
        "bar; print the status page, the video and the job's PostgreSQL row.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("paper_id", nargs="?", metavar="PAPER_ID",
                      help="a bundled paper (see `progress-service papers`; default: the first)")
    demo.add_argument("--serve", action="store_true",
                      help="after the job, keep the status page up until Ctrl-C")
    demo.add_argument("--port", type=int, default=None, metavar="N",
                      help="the web server's port (default: a free one)")
    demo.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                      help="give up on the job after this long (default 600)")
    demo.set_defaults(handler=run_demo)


def say(text: str, stream=None) -> None:
    with suppress(OSError, ValueError):  # the terminal is gone (SIGHUP): the clean-up goes on regardless
        print(f"demo: {text}" if stream is None else text, file=stream or sys.stdout, flush=True)


# -- processes --------------------------------------------------------------------


class Child:
    """A child process in a new session (its own process group) with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid
        self.seen: dict[int, psutil.Process] = {self.pid: psutil.Process(self.pid)}  # pid, start time

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])

    def remember_descendants(self) -> None:
        """Note every process below this one: a grandchild in a session of its own (a
        pipeline run) is not in our process group, and once its parent dies only this
        note finds it."""
        if self.process.poll() is None:
            with suppress(psutil.Error):  # gone since
                self.seen.update((p.pid, p) for p in psutil.Process(self.pid).children(recursive=True))

    def signal_all(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):  # the group is gone (or not ours any more)
            os.killpg(self.pid, sig)
        for process in self.seen.values():
            if process_alive(process):
                with suppress(psutil.Error):  # gone meanwhile, or its pid reused: not signalled
                    process.send_signal(sig)

    def left_running(self) -> list[int]:
        """Live (not zombie) processes of its process group, and of those noted below it."""
        group = set(group_members(self.pid))
        return sorted(group | {pid for pid, p in self.seen.items() if process_alive(p)})

    def stop(self) -> list[int]:
        """SIGTERM (twice: RQ's second one is its cold shutdown), then SIGKILL; reap; return
        the pids still running, which should be none."""
        for sig, wait in ((signal.SIGTERM, STOP_GRACE / 2), (signal.SIGTERM, STOP_GRACE / 2),
                          (signal.SIGKILL, 5.0)):
            self.remember_descendants()
            if not self.left_running():
                break
            self.signal_all(sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.process.poll()
                if not self.left_running():
                    break
                time.sleep(0.05)
        with suppress(subprocess.TimeoutExpired):  # still running: left_running says so
            self.process.wait(timeout=1)
        return self.left_running()


# -- the demo ------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = Path(tempfile.mkdtemp(prefix="progress-demo-"))
        # As root, PostgreSQL runs as another user, who must be able to reach its folder inside.
        self.folder.chmod(0o711)
        self.servers: list = []  # embedded Redis / PostgreSQL
        self.children: list[Child] = []
        self.died: str | None = None
        self.job_code: int | None = None  # exit code of the finished job
        self._serving = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> int:
        from worker.pipelines.papers import UnknownPaperError, list_papers, load_paper

        try:
            paper = load_paper(self.args.paper_id) if self.args.paper_id else list_papers()[0]
        except UnknownPaperError as exc:
            print(f"progress-service demo: {exc}", file=sys.stderr)
            return exit_codes.USAGE
        port = self.args.port or _free_port()
        base = f"http://127.0.0.1:{port}"
        say(f"status page: {base}/status/{paper.pmid}/  (paper {paper.pmid}: {paper.title})")
        env = self._servers(dict(os.environ))
        settings = Settings.from_env(env)

        from progress_service import migrations

        applied = migrations.upgrade(settings.database_url)
        say("db upgrade: " + (", ".join(map(str, applied)) if applied else "already up to date"))

        cli = [sys.executable, "-m", "progress_cli"]
        self._start("web", [*cli, "web", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    env)
        self._start("worker", [*cli, "worker"], env)
        self._wait_for_web(base)
        threading.Thread(target=self._watchdog, daemon=True, name="demo-watchdog").start()

        from progress_cli.terminal import exit_code_for, follow_job
        from progress_service.queue import submit_job
        from progress_service.store import ProgressStore

        store = ProgressStore.from_settings(settings)
        job_id = submit_job(settings, paper.pmid, "video", store=store)
        say(f"submitted job {job_id}; live at {base}/status/{paper.pmid}/")
        final = follow_job(store, job_id, out=sys.stderr, timeout=self.args.timeout)
        status = final["status"]
        say(f"job {job_id} {status}" + (f": {final['error']}" if final.get("error") else ""))
        result = final.get("result") or {}
        video = result.get("video_path")
        if video:
            say(f"video: {video} ({'exists' if Path(video).is_file() else 'MISSING'})")
        self._report_mirror(store, settings, job_id)
        self.job_code = exit_code_for(status)
        if self.args.serve:
            say(f"serving {base}/status/{paper.pmid}/ until Ctrl-C")
            self._serving.set()
            while True:
                time.sleep(3600)
        return self.job_code

    def _servers(self, env: dict[str, str]) -> dict[str, str]:
        """Start embedded servers where REDIS_URL / DATABASE_URL are unset; the children's env."""
        from progress_cli.embedded import EmbeddedPostgres, EmbeddedRedis

        if not env.get("REDIS_URL"):
            server = self._embedded(EmbeddedRedis, "Redis")
            env["REDIS_URL"] = server.url
            say(f"REDIS_URL is unset: started an embedded Redis at {server.url} (pid {server.pid})")
        else:
            say(f"Redis: {redacted_url(env['REDIS_URL'])} (REDIS_URL)")
        if not env.get("DATABASE_URL"):
            postgres = self._embedded(EmbeddedPostgres, "PostgreSQL")
            env["DATABASE_URL"] = postgres.url
            say(f"DATABASE_URL is unset: started an embedded PostgreSQL at {postgres.url} "
                f"(pid {postgres.pid})")
        else:
            say(f"PostgreSQL: {redacted_url(env['DATABASE_URL'])} (DATABASE_URL)")
        env.setdefault("PROGRESS_MIN_INTERVAL", DEMO_MIN_INTERVAL)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _embedded(self, server_class, what: str):
        """Start an embedded server; one that cannot start is one line, not a traceback."""
        from progress_cli.embedded import EmbeddedServerError

        try:
            server = server_class(base_dir=self.folder)
        except EmbeddedServerError as exc:
            raise ChildDied(f"could not start an embedded {what}: {exc}") from None
        self.servers.append(server)
        return server

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.folder)
        self.children.append(child)
        say(f"started {name} (pid {child.pid}, process group {child.pid})")
        return child

    def _wait_for_web(self, base: str) -> None:
        web = self.children[0]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if web.process.poll() is not None:
                raise ChildDied(f"the web server exited with code {web.process.returncode}:\n"
                                f"{web.log_tail()}")
            with suppress(OSError):  # not listening yet, or not healthy yet: asked again below
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        raise ChildDied(f"the web server did not answer {base}/healthz within {START_TIMEOUT:g}s:\n"
                        f"{web.log_tail()}")

    def _watchdog(self) -> None:
        """A web server or worker that dies while we wait for the job ends the demo at once."""
        while not self._stopping.is_set():
            for child in self.children:
                if child.process.poll() is not None and not self._stopping.is_set():
                    self.died = f"the {child.name} exited with code {child.process.returncode}"
                    _thread.interrupt_main()
                    return
                child.remember_descendants()
            time.sleep(0.2)

    def _report_mirror(self, store, settings: Settings, job_id: str) -> None:
        from progress_service.mirror import Mirror

        with Mirror(store, settings.database_url) as mirror:
            row = _poll(lambda: mirror.fetch(job_id), MIRROR_WAIT)
            note = "copied by the worker's mirror"
            if row is None:
                mirror.mirror_job(job_id)
                row = mirror.fetch(job_id)
                note = "copied by the demo: the worker's mirror had not yet"
        if row is None:
            say(f"PostgreSQL: no row for job {job_id} in progress_jobs")
        else:
            say(f"PostgreSQL: progress_jobs holds job {job_id} (status {row['status']}, "
                f"seq {row['seq']}, {len(row['history'])} history entries; {note})")

    def stop(self) -> bool:
        """Stop everything this demo started, newest first; True if nothing is left running."""
        self._stopping.set()
        clean = True
        for child in reversed(self.children):
            left = child.stop()
            if left:
                clean = False
                say(f"could not stop {child.name}: pids {left} still run")
            else:
                say(f"stopped {child.name} (pid {child.pid})")
        for server in reversed(self.servers):
            pid = server.pid
            server.stop()
            if pid is not None and process_alive(pid):
                clean = False
                say(f"could not stop the embedded {server.name} (pid {pid})")
            else:
                say(f"stopped the embedded {server.name} (pid {pid})")
        shutil.rmtree(self.folder, ignore_errors=True)
        return clean


class ChildDied(ProgressError):
    """A server or process the demo started exited, or did not come up."""


def _free_port() -> int:
    from progress_cli.embedded import find_free_port

    return find_free_port()


def _poll(fn: Callable[[], object], timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except BackendUnavailable:
            value = None
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(interval)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, the terminal closed


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    from progress_cli.extras import require

    require("web", "worker", "video", install="demo")
    Settings.from_env()  # a malformed REDIS_URL / DATABASE_URL: one line, exit 78, nothing started
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM and SIGHUP clean up like Ctrl-C
    signal.signal(signal.SIGHUP, _raise_interrupt)
    demo = Demo(args)
    code = exit_codes.UNAVAILABLE
    try:
        code = demo.run()
    except KeyboardInterrupt:
        if demo.died:
            say(f"{demo.died}; its log ends:")
            for child in demo.children:
                if child.process.poll() is not None:
                    say(child.log_tail(), sys.stderr)
            code = exit_codes.UNAVAILABLE
        elif demo.job_code is not None:
            say("stopping")
            code = demo.job_code
        else:
            say("interrupted before the job finished")
            code = exit_codes.INTERRUPTED
    except TimeoutError as exc:
        say(f"error: {exc}")
        code = exit_codes.TIMEOUT
    except ProgressError as exc:
        say(f"error: {exc}")
        code = exit_codes.UNAVAILABLE
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C, SIGTERM or SIGHUP: the clean-up still ends
            signal.signal(sig, signal.SIG_IGN)
        try:
            clean = demo.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if not clean:
        return exit_codes.UNAVAILABLE
    return code
