"""Run one command as a tracked job: a subprocess, its output parsed, progress written.

    outcome = run_command(store, job_id, argv, steps=pipeline.steps,
                          weights=pipeline.weights, settings=settings)

What happens, in order:

1. The job is marked ``running`` (at once). If the store says it is finished
   already (canceled while queued), the command is not started at all.
2. The command starts in a process group of its own (``start_new_session``), with
   ``PROGRESS_JOB_ID`` in its environment. Its stdout and stderr are read
   concurrently, in one ``selectors`` loop, and cut into lines by
   ``worker.parser.LineSplitter`` (``\\r`` redraws are lines; partial lines, invalid
   UTF-8 and lines up to ``MAX_LINE_BYTES`` survive).
3. Each line goes through ``parse_line`` and ``ProgressTracker``; what changes goes
   to the store through ``progress_service.Throttle``: a step change at once,
   percent-only changes at most every ``settings.min_interval`` seconds, and
   nothing dropped at the end. Lines that are not ours, or refused, are logged
   at debug level and otherwise ignored.
4. A watcher thread stamps ``store.heartbeat`` every ``settings.heartbeat_interval``
   seconds, flushes the update statistics, and listens on the job's channel: when
   the job turns terminal under us (a cancel from anywhere, a sweeper's
   ``worker lost``), the whole process tree is killed.
   A job the store has lost while the command runs (Redis restarted empty: a write
   answered ``not_found``, or a heartbeat found no job) is not a reason to stop a
   healthy command: the runner re-creates it (same id, paper, pipeline and steps,
   its ``seq`` going on above the last one seen, so readers keep showing it) and
   re-applies what it has written so far, with one WARNING line.
5. The end: exit 0 -> ``completed`` with the pipeline's result line (at least
   ``{"exit_code": 0}``); non-zero -> ``failed`` with the exit code and the last
   lines of stderr; an exception (RQ's job timeout, Ctrl-C) or a timeout -> the
   tree killed, then ``failed`` (``canceled`` for Ctrl-C), and the exception raised
   again. Killing is SIGTERM to the group and every known descendant, SIGKILL
   after ``kill_grace`` seconds, and a check by pid that nothing is left.

Nothing here knows RQ: ``worker.jobs`` wraps this for the queue, and
``progress-service run`` uses it directly.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from progress_service import ProgressStore, Settings, Status, Throttle
from progress_service.errors import BackendUnavailable, JobConflict, JobNotFound
from progress_service.models import TERMINAL_VALUES, ms_from_iso
from progress_service.scripts import UpdateResult
from worker.parser import LineKind, LineSplitter, ProgressTracker, parse_line
from worker.process_tree import KILL_GRACE, group_members, kill_process_tree, tagged_processes

logger = logging.getLogger(__name__)

__all__ = ["JOB_ID_ENV", "KILL_GRACE", "RunOutcome", "run_command"]

JOB_ID_ENV = "PROGRESS_JOB_ID"  # set in the command's environment: marks its process tree
MAX_LINE_BYTES = 1 << 20  # a line longer than this keeps its first MiB
READ_SIZE = 1 << 16
TAIL_LINES = 20  # stderr lines kept for a failure's error
TAIL_CHARS = 2000
TAIL_LINE_CHARS = 300
REFUSED_WARNINGS = 5  # lines that looked like ours but were refused, logged at WARNING per job
DRAIN_AFTER_EXIT = 1.0  # seconds to keep reading after the command exited (a grandchild may hold the pipes)
_RESTORED = ("progress_percent", "current_step", "message")  # what re-creating a lost job carries over

OnWrite = Callable[[dict[str, Any], UpdateResult], None]


@dataclass
class RunOutcome:
    """How a command's run ended, as the store now records it."""

    job_id: str
    status: str  # completed | failed | canceled
    exit_code: int | None = None  # the command's; negative: killed by that signal; None: not started
    error: str | None = None
    result: dict[str, Any] | None = None
    pid: int | None = None
    survivors: list[int] = field(default_factory=list)  # pids left after a kill: should be none
    stopped_by: str | None = None  # why the runner killed the tree, if it did

    @property
    def shell_exit_code(self) -> int:
        """The exit status a shell would show: the command's own, 128+N for signal N,
        127 when it could not start, 130 when interrupted, 1 for another failure."""
        if self.exit_code is not None:
            return 128 - self.exit_code if self.exit_code < 0 else self.exit_code
        if self.stopped_by == "interrupted":
            return 130
        if self.stopped_by == "not started":
            return 127
        return 0 if self.status == Status.COMPLETED.value else 1


class _Stop(Exception):
    """Internal: the watcher or a write asked the read loop to stop."""


def run_command(
    store: ProgressStore,
    job_id: str,
    argv: Sequence[str],
    *,
    steps: Sequence[str],
    weights: Sequence[float] | None = None,
    settings: Settings,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_write: OnWrite | None = None,
    on_start: Callable[[int], None] | None = None,
    on_output: Callable[[str, str], None] | None = None,
    timeout: float | None = None,
    kill_grace: float = KILL_GRACE,
    describe_exception: Callable[[BaseException], str | None] | None = None,
) -> RunOutcome:
    """Run ``argv`` as job ``job_id`` (which must exist) and return how it ended.

    ``env`` is the command's whole environment (default: this process's), to which
    ``PROGRESS_JOB_ID`` is added. ``on_write(fields, result)`` is called after each
    store write the throttle lets through; ``on_start(pid)`` once the command runs;
    ``on_output(stream, line)`` for every line ("stdout" / "stderr"). ``timeout``
    kills the command after that many seconds (``failed``, "timed out after N s").
    ``describe_exception(exc)`` names an exception raised into the run (e.g. RQ's
    job timeout) for the job's error; the exception is raised again afterwards.
    """
    if not argv:
        raise ValueError("argv must name a command")
    run = _CommandRun(store, job_id, list(argv), steps=steps, weights=weights, settings=settings,
                      cwd=cwd, env=env, on_write=on_write, on_start=on_start, on_output=on_output,
                      timeout=timeout, kill_grace=kill_grace, describe_exception=describe_exception)
    return run.run()


class _CommandRun:
    def __init__(self, store, job_id, argv, *, steps, weights, settings, cwd, env, on_write,
                 on_start, on_output, timeout, kill_grace, describe_exception) -> None:
        self.store = store
        self.job_id = job_id
        self.argv = argv
        self.settings = settings
        self.cwd = cwd
        self.env = env
        self.on_write = on_write
        self.on_start = on_start
        self.on_output = on_output
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.describe_exception = describe_exception
        self.tracker = ProgressTracker(steps, weights)
        self.throttle = Throttle(self._write, settings.min_interval)
        self.result: dict[str, Any] | None = None
        self.written_step: str | None = None
        self.written_message: str | None = None
        # What re-creating a job the store lost needs: read from the store at the start.
        self.job_spec: dict[str, Any] | None = None  # paper_id, pipeline, steps
        self.last_seq = 0  # the highest seq the store has answered
        self.progress_state: dict[str, Any] = {}  # step, percent, message the store accepted
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)  # lines that are not progress
        self.stderr_any: deque[str] = deque(maxlen=TAIL_LINES)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_reason: str | None = None  # set by the watcher or a rejected write
        self.write_failing = False
        self.refused_lines = 0
        self._stop_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._finished = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunOutcome:
        try:
            return self._run()
        finally:
            self._finished.set()
            self._close_quietly()

    def _run(self) -> RunOutcome:
        first = self.store.update(self.job_id, status=Status.RUNNING.value)
        if first.reason == "not_found":
            raise JobNotFound(f"job {self.job_id} not found: create it before running a command for it")
        if first.reason == "terminal":
            snap = self.store.get(self.job_id) or {}
            status = snap.get("status") or Status.CANCELED.value
            logger.info("job %s: %s before the command started; not starting it", self.job_id, status)
            return RunOutcome(self.job_id, status, error=snap.get("error"), stopped_by="finished before start")
        if first.reason == "ok":
            logger.info("job %s: %s -> %s", self.job_id, Status.PENDING.value, Status.RUNNING.value)
        self.last_seq = first.seq
        self.job_spec = self._read_job_spec()
        self._notify({"status": Status.RUNNING.value}, first)
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, cwd=self.cwd,
                env={**(os.environ if self.env is None else self.env), JOB_ID_ENV: self.job_id},
            )
        except OSError as exc:
            error = f"cannot start {self.argv[0]!r}: {exc.strerror or exc}"
            logger.info("job %s: %s -> %s (%s)", self.job_id, Status.RUNNING.value, Status.FAILED.value, error)
            self._final(status=Status.FAILED.value, error=error)
            return RunOutcome(self.job_id, Status.FAILED.value, error=error, stopped_by="not started")
        pid = self.proc.pid
        logger.info("job %s: started pid %d: %s", self.job_id, pid, _show(self.argv))
        if self.on_start is not None:
            try:
                self.on_start(pid)
            except Exception:
                logger.exception("job %s: on_start hook failed", self.job_id)
        self._watcher = threading.Thread(target=self._watch, name=f"heartbeat-{self.job_id}",
                                         daemon=True)
        self._watcher.start()
        try:
            self._read_until_exit()
        except BaseException as exc:  # RQ's job timeout, Ctrl-C, a bug: never leave the tree behind
            return self._end_by_exception(exc)
        return self._end()

    def _read_until_exit(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        splitters = {"stdout": LineSplitter(MAX_LINE_BYTES), "stderr": LineSplitter(MAX_LINE_BYTES)}
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            open_streams = 2
            exited_at: float | None = None
            while open_streams:
                if self.stop_reason is not None:
                    raise _Stop(self.stop_reason)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._request_stop("timeout")
                    raise _Stop("timeout")
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                    logger.debug("job %s: the command exited; its pipes are still open (a "
                                 "background process holds them): not waiting for them", self.job_id)
                    break
                wait = 0.25 if exited_at is None else 0.05
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - now))
                for key, _ in sel.select(wait):
                    name = key.data
                    if name == "wake":
                        os.read(self._wake_r, 512)
                        continue
                    data = os.read(key.fd, READ_SIZE)
                    if data:
                        lines = splitters[name].feed(data)
                    else:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        lines = splitters[name].close()
                    for line in lines:
                        self._on_line(name, line)
        for name, splitter in splitters.items():
            for line in splitter.close():
                self._on_line(name, line)
        # The pipes are closed (or given up on); the command may still run: wait for it
        # as watchfully as we read it.
        while True:
            try:
                proc.wait(timeout=0.1)
                return
            except subprocess.TimeoutExpired:
                pass
            if self.stop_reason is not None:
                raise _Stop(self.stop_reason)
            if deadline is not None and time.monotonic() >= deadline:
                self._request_stop("timeout")
                raise _Stop("timeout")

    def _on_line(self, stream: str, line: str) -> None:
        if self.on_output is not None:
            try:
                self.on_output(stream, line)
            except Exception:
                logger.exception("job %s: on_output hook failed", self.job_id)
        parsed = parse_line(line)
        if stream == "stderr":
            short = line if len(line) <= TAIL_LINE_CHARS else line[: TAIL_LINE_CHARS - 1] + "…"
            self.stderr_any.append(short)
            if parsed is None or parsed.kind is LineKind.IGNORED:
                self.stderr_tail.append(short)
        if parsed is None:
            return
        if parsed.kind is LineKind.IGNORED:
            self._refused(line, parsed.reason or "not understood")
            return
        if parsed.result is not None:
            self.result = parsed.result
        update = self.tracker.feed(parsed)
        if update is None:
            reason = self.tracker.last_ignored_reason
            if reason and reason.startswith("unknown step"):
                self._refused(line, reason)  # a pipeline bug, like PROGRESS 150
            elif reason:  # a bar restarting lower, a late PROGRESS: ordinary, nothing moves back
                logger.debug("job %s: ignored line: %s", self.job_id, reason)
            return
        fields: dict[str, Any] = {"progress_percent": update.progress_percent}
        if update.current_step is not None and update.current_step != self.written_step:
            fields["current_step"] = update.current_step
            self.written_step = update.current_step
            logger.info("job %s: step %s", self.job_id, update.current_step)
        if update.message is not None and update.message != self.written_message:
            fields["message"] = update.message
            self.written_message = update.message
        try:
            self.throttle.update(**fields)
        except Exception as exc:  # Redis away: the throttle keeps the values for the next write
            if not self.write_failing:
                logger.warning("job %s: progress write failed, retrying with the next change: %s",
                               self.job_id, exc)
                self.write_failing = True

    def _refused(self, line: str, reason: str) -> None:
        """A line in the pipeline's progress protocol that says something impossible
        (``PROGRESS 150``, ``STEP no-such-step``): the pipeline's author should hear of it,
        a few times per job, without a flood from a pipeline that prints only that."""
        self.refused_lines += 1
        if self.refused_lines > REFUSED_WARNINGS:
            logger.debug("job %s: ignored line: %s", self.job_id, reason)
            return
        shown = line if len(line) <= 120 else line[:119] + "…"
        more = (" (further ones are logged at debug level)"
                if self.refused_lines == REFUSED_WARNINGS else "")
        logger.warning("job %s: ignored a progress line: %s: %r%s", self.job_id, reason, shown, more)

    # -- the end ---------------------------------------------------------------

    def _end(self) -> RunOutcome:
        proc = self.proc
        assert proc is not None and proc.returncode is not None
        code = proc.returncode
        survivors = self._kill_leftovers()
        self._finished.set()
        if self.stop_reason is not None and self.stop_reason != "timeout":
            # Finished under us while the command was ending: the store's word stands.
            return self._outcome_from_store(code, survivors)
        if code == 0:
            result = {**(self.result or {}), "exit_code": 0}
            logger.info("job %s: %s -> %s", self.job_id, Status.RUNNING.value, Status.COMPLETED.value)
            written = self._final(status=Status.COMPLETED.value, result=result)
            result = written.get("result", result)
            return RunOutcome(self.job_id, Status.COMPLETED.value, exit_code=0, result=result,
                              pid=proc.pid, survivors=survivors)
        error = self._failure_text(code)
        lines = error.splitlines()
        shown = lines[0] if len(lines) == 1 else f"{lines[0].split(':')[0]}: … {lines[-1]}"
        logger.info("job %s: %s -> %s (%s)", self.job_id, Status.RUNNING.value, Status.FAILED.value,
                    shown)
        self._final(status=Status.FAILED.value, error=error)
        return RunOutcome(self.job_id, Status.FAILED.value, exit_code=code, error=error, pid=proc.pid,
                          survivors=survivors)

    def _end_by_exception(self, exc: BaseException) -> RunOutcome:
        proc = self.proc
        assert proc is not None
        reason = exc.args[0] if isinstance(exc, _Stop) else None
        if reason is None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "exception"
            self._request_stop(reason)
        survivors = kill_process_tree(proc.pid, grace=self.kill_grace, popen=proc, tag=self._tag)
        self._finished.set()
        code = proc.returncode
        error: str | None  # each way out below sets it; None keeps the stored error
        if reason == "timeout":
            error = f"timed out after {self.timeout:g} s"
            self._log_end(Status.FAILED.value, error)
            self._final(status=Status.FAILED.value, error=error)
            return RunOutcome(self.job_id, Status.FAILED.value, exit_code=code, error=error,
                              pid=proc.pid, survivors=survivors, stopped_by=reason)
        if isinstance(exc, _Stop):  # canceled, failed or gone under us: the store's word stands
            return self._outcome_from_store(code, survivors)
        if isinstance(exc, KeyboardInterrupt):
            status, error = Status.CANCELED.value, None
            message = "interrupted"
        else:
            status, message = Status.FAILED.value, None
            error = None
            if self.describe_exception is not None:
                try:
                    error = self.describe_exception(exc)
                except Exception:
                    logger.exception("job %s: describe_exception failed", self.job_id)
            error = error or f"{type(exc).__name__}: {exc}"
        self._log_end(status, error or message)
        self._final(status=status, error=error, message=message)
        raise exc

    def _outcome_from_store(self, code: int | None, survivors: list[int]) -> RunOutcome:
        try:
            snap = self.store.get(self.job_id)
        except BackendUnavailable:
            snap = None
        status = (snap or {}).get("status") or Status.CANCELED.value
        if status not in TERMINAL_VALUES:  # cannot happen unless forced back to life; say what we did
            status = Status.CANCELED.value
        self._log_end(status, f"by the store: {(snap or {}).get('error') or self.stop_reason}")
        pid = self.proc.pid if self.proc else None
        return RunOutcome(self.job_id, status, exit_code=code, error=(snap or {}).get("error"),
                          result=(snap or {}).get("result"), pid=pid, survivors=survivors,
                          stopped_by=self.stop_reason)

    def _log_end(self, status: str, detail: str | None) -> None:
        if detail:
            logger.info("job %s: %s -> %s (%s)", self.job_id, Status.RUNNING.value, status, detail)
        else:
            logger.info("job %s: %s -> %s", self.job_id, Status.RUNNING.value, status)

    def _failure_text(self, code: int) -> str:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            head = f"killed by {name}"
        else:
            head = f"exit code {code}"
        lines = list(self.stderr_tail or self.stderr_any)
        tail = "\n".join(lines)
        if len(tail) > TAIL_CHARS:
            tail = "…" + tail[-(TAIL_CHARS - 1):]
        return f"{head}: {tail}" if tail else f"{head} (nothing on stderr)"

    @property
    def _tag(self) -> str:
        """The environment entry every process of this job inherits (see ``kill_process_tree``)."""
        return f"{JOB_ID_ENV}={self.job_id}"

    def _kill_leftovers(self) -> list[int]:
        """After the command exited: processes it left behind (in its group, or
        double-forked away with the job's environment) are killed too."""
        assert self.proc is not None
        left = {*group_members(self.proc.pid), *tagged_processes(self._tag)} - {self.proc.pid}
        if not left:
            return []
        logger.info("job %s: the command left %d process(es) behind: killing them", self.job_id, len(left))
        return kill_process_tree(self.proc.pid, grace=min(self.kill_grace, 1.0), extra=left, tag=self._tag)

    def _final(self, **fields: Any) -> dict[str, Any]:
        """The last write: at once, through the throttle so nothing pending is lost.
        Returns the fields written.

        Redis may be away for a moment: the write is retried for up to
        ``worker_lost_after`` seconds (at least 5), so that a job that ended is not
        later failed as ``worker lost``. A result the store refuses (NaN or Infinity
        in it, say) must not leave the job running either: it is written again with
        only the exit code as its result, and the message saying why.
        """
        fields = {k: v for k, v in fields.items() if v is not None}
        deadline = time.monotonic() + max(5.0, self.settings.worker_lost_after)
        delay = 0.1
        while True:
            try:
                self.throttle.update(**fields)  # urgent: flushes what is pending with it
                self.throttle.close()
                return fields
            except (BackendUnavailable, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    logger.error("job %s: could not write the final state %r: %s",
                                 self.job_id, fields, exc)
                    return fields
                if delay == 0.1:
                    logger.warning("job %s: the final write failed (%s); retrying", self.job_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                kept = {k: v for k, v in (fields.get("result") or {}).items() if k == "exit_code"}
                if "result" in fields and fields["result"] != kept:
                    why = f"the pipeline's result was not stored: {exc}"
                    logger.warning("job %s: %s", self.job_id, why)
                    # overrides the refused values the throttle kept for the next try
                    fields = {**fields, "result": kept, "message": why}
                    continue
                logger.error("job %s: could not write the final state %r: %s", self.job_id, fields, exc)
                return fields

    # -- writes and the watcher ------------------------------------------------

    def _write(self, fields: dict[str, Any]) -> UpdateResult:
        """One store update (the throttle's writer: every write after the first comes here,
        under the throttle's lock, whichever thread makes it)."""
        result = self.store.update(self.job_id, **fields)
        if result.reason == "not_found" and self.job_spec is not None:
            self._recreate_job(fields)
            result = self.store.update(self.job_id, **fields)
        if self.write_failing:
            logger.info("job %s: progress writes go through again", self.job_id)
            self.write_failing = False
        self.refused_lines = 0
        self.last_seq = max(self.last_seq, result.seq)
        if result.accepted:
            self.progress_state.update((k, v) for k, v in fields.items() if k in _RESTORED)
        if not result.accepted and result.reason in ("terminal", "not_found"):
            if fields.get("status") not in TERMINAL_VALUES:
                self._request_stop(result.reason)
        self._notify(fields, result)
        return result

    def _read_job_spec(self) -> dict[str, Any] | None:
        """The job's paper, pipeline and steps as the store has them (None if unreadable)."""
        try:
            snap = self.store.get(self.job_id)
        except BackendUnavailable as exc:
            logger.warning("job %s: cannot read the job (%s); if the store loses it, the "
                           "command will be stopped", self.job_id, exc)
            return None
        if snap is None:
            return None
        return {"paper_id": snap["paper_id"], "pipeline": snap["pipeline"], "steps": snap["steps"],
                "created_at_ms": ms_from_iso(snap["created_at"]),
                "started_at_ms": ms_from_iso(snap["started_at"])}

    def _recreate_job(self, fields: dict[str, Any]) -> None:
        """Re-create the job the store lost at the state it had, in one script call.

        ``store.restore_job`` writes it ``running`` at the step, percent and message
        the store last accepted, with ``fields`` (the write that found it gone, which
        is never behind them) laid over, and publishes that as its first event: no
        reader sees it pass through pending/0. Its seq goes on above the last one this
        run saw. A cancel is not lost this way: it leaves the job ``canceled``, which
        is ``terminal``, not ``not_found``.
        """
        spec = self.job_spec
        assert spec is not None
        logger.warning("job %s: the progress store lost the job (Redis restarted empty?); "
                       "re-creating it at seq > %d and carrying on", self.job_id, self.last_seq)
        state = {**self.progress_state,
                 **{k: v for k, v in fields.items() if k in _RESTORED and v is not None}}
        if state.get("progress_percent", 0) >= 100:  # this write completes it: restore it before
            state["progress_percent"] = self.progress_state.get("progress_percent", 0)
        try:
            snap = self.store.restore_job(self.job_id, spec["paper_id"], spec["steps"], spec["pipeline"],
                                          seq_floor=self.last_seq, created_at_ms=spec["created_at_ms"],
                                          started_at_ms=spec["started_at_ms"],
                                          status=Status.RUNNING.value, **state)
            self.last_seq = max(self.last_seq, snap["seq"])
        except JobConflict:  # it is back already: bring it up to date (forward only)
            restored = self.store.update(self.job_id, status=Status.RUNNING.value, **state)
            self.last_seq = max(self.last_seq, restored.seq)

    def _notify(self, fields: dict[str, Any], result: UpdateResult) -> None:
        if self.on_write is None:
            return
        try:
            self.on_write(fields, result)
        except Exception:
            logger.exception("job %s: on_write hook failed", self.job_id)

    def _request_stop(self, reason: str) -> None:
        with self._stop_lock:
            if self.stop_reason is not None or self._finished.is_set():
                return
            self.stop_reason = reason
        logger.info("job %s: stopping the command (%s)", self.job_id, reason)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _watch(self) -> None:
        """Heartbeats, statistics, and a kill when the job turns terminal under us."""
        interval = self.settings.heartbeat_interval
        feed = None
        try:
            feed = self.store.events(self.job_id)
        except Exception as exc:
            logger.warning("job %s: cannot listen for a cancel (%s); relying on heartbeats", self.job_id, exc)
        next_beat = 0.0
        warned = False
        try:
            while not self._finished.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + interval
                    try:
                        alive = self.store.heartbeat(self.job_id)
                        self.store.flush_stats()
                        warned = False
                    except Exception as exc:
                        alive = True
                        if not warned:
                            logger.warning("job %s: heartbeat failed: %s", self.job_id, exc)
                            warned = True
                    if not alive and not self._finished.is_set():
                        state = self._state_in_store()
                        if state == "missing":  # the store lost it: re-created by this write
                            self._write_through_throttle(status=Status.RUNNING.value)
                        elif state in TERMINAL_VALUES:
                            self._request_stop("finished in the store")
                            return
                wait = max(0.0, min(next_beat - time.monotonic(), 0.2))
                if feed is None:
                    self._finished.wait(wait)
                    continue
                try:
                    event = feed.get(timeout=wait)
                except Exception:
                    self._finished.wait(wait)
                    continue
                if event is not None and event.get("status") in TERMINAL_VALUES and not self._finished.is_set():
                    self._request_stop("finished in the store")
                    return
        finally:
            if feed is not None:
                try:
                    feed.close()
                except Exception:
                    pass

    def _state_in_store(self) -> str | None:
        """The job's status in the store, "missing" if it has none, None if unreadable."""
        try:
            snap = self.store.get(self.job_id)
        except Exception:
            return None  # the next heartbeat asks again
        return "missing" if snap is None else snap["status"]

    def _write_through_throttle(self, **fields: Any) -> None:
        """A write from the watcher: through the throttle, so it is serialised with the
        others; a job the store lost is re-created there (``_write``)."""
        try:
            self.throttle.update(**fields)
        except Exception as exc:  # Redis away again, or the run ended meanwhile
            logger.debug("job %s: write from the watcher failed: %s", self.job_id, exc)

    def _close_quietly(self) -> None:
        try:
            self.throttle.close()  # stops a pending timer; a no-op when already closed
        except Exception:
            pass
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)
        try:
            self.store.flush_stats()
        except Exception:
            pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass


def _show(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
