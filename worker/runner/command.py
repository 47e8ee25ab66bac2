"""One command's run, from the job's ``running`` to its end: start, watch, end, kill.

1. The job is marked ``running`` (at once). If the store says it is finished
   already (canceled while queued), the command is not started at all.
2. The command starts in a process group of its own (``start_new_session``), with
   ``PROGRESS_JOB_ID`` (the job's id, for the pipeline) and ``PROGRESS_JOB_TAG`` (a
   tag unique to this run, which marks its processes) in its environment. Its
   output is read (``worker.runner.reading``) and turned into store writes
   (``worker.runner.output``); a watcher thread (``worker.runner.watcher``) stamps
   heartbeats and stops the run when the job turns terminal under it; a job the
   store lost is re-created (``worker.runner.recovery``).
3. The end: exit 0 -> ``completed`` with the pipeline's result line (at least
   ``{"exit_code": 0}``); non-zero -> ``failed`` with the exit code and the last
   lines of stderr; an exception (RQ's job timeout, Ctrl-C) or a timeout -> the
   tree killed, then ``failed`` (``canceled`` for Ctrl-C), and the exception raised
   again. Killing is SIGTERM to the group and every known descendant, SIGKILL
   after ``kill_grace`` seconds, and a check by pid that nothing is left. Processes
   the command left behind are found by its group and by the run's tag, never by
   the job id alone (another deployment may run a job of the same id).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from redis.exceptions import RedisError

from progress_service import ProgressStore, Status, Throttle
from progress_service.errors import BackendUnavailable, JobNotFound, ProgressError
from progress_service.models import TERMINAL_VALUES
from progress_service.scripts import UpdateResult
from worker.process_tree import group_members, kill_process_tree, tagged_processes
from worker.runner.options import (
    JOB_ID_ENV,
    STORE_ERRORS,
    RunOptions,
    RunOutcome,
    Stop,
    call_hook,
    is_job_tag,
    job_tag,
    logger,
)
from worker.runner.output import OutputHandler
from worker.runner.reading import OutputReader
from worker.runner.recovery import JobRecovery
from worker.runner.watcher import Watcher


def run_command(store: ProgressStore, job_id: str, argv: Sequence[str], **options: Any) -> RunOutcome:
    """Run ``argv`` as job ``job_id`` (which must exist) and return how it ended.

    ``options`` are ``RunOptions``' fields: ``steps`` and ``settings`` (required),
    ``weights``, ``cwd``, ``env`` (the command's whole environment, default this
    process's, to which ``PROGRESS_JOB_ID`` and ``PROGRESS_JOB_TAG`` are added),
    ``on_write(fields, result)`` after each store write the throttle lets through,
    ``on_start(pid)`` once the command runs, ``on_output(stream, line)`` for every
    line ("stdout" / "stderr"), ``timeout`` (kills the command after that many
    seconds: ``failed``, "timed out after N s"), ``kill_grace``,
    ``describe_exception(exc)`` (names an exception raised into the run, e.g. RQ's
    job timeout, for the job's error; the exception is raised again afterwards) and
    ``tag`` (the run's ``PROGRESS_JOB_TAG`` entry, from ``job_tag``; default a new one).
    """
    if not argv:
        raise ValueError("argv must name a command")
    return CommandRun(store, job_id, list(argv), RunOptions(**options)).run()


class CommandRun:
    def __init__(self, store: ProgressStore, job_id: str, argv: list[str], options: RunOptions) -> None:
        if options.tag is not None and not is_job_tag(options.tag):
            raise ValueError(f"tag must come from job_tag(), got {options.tag!r}")
        self.store = store
        self.job_id = job_id
        self.argv = argv
        self.options = options
        self.tag = options.tag or job_tag(store.keys.prefix, job_id)  # NAME=value, see job_tag
        self.throttle = Throttle(self._write, options.settings.min_interval)
        self.output = OutputHandler(job_id, options, self.throttle)
        self.recovery = JobRecovery(store, job_id)
        self.proc: subprocess.Popen[bytes] | None = None
        self.deadline: float | None = None  # time.monotonic() value, from the first read on
        self.stop_reason: str | None = None  # set by the watcher, a rejected write or the deadline
        self._stop_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._finished = threading.Event()
        self._watcher = Watcher(store, job_id, interval=options.settings.heartbeat_interval,
                                finished=self._finished, stop=self.request_stop,
                                recreate=self._write_from_watcher)

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunOutcome:
        try:
            return self._run()
        finally:
            self._finished.set()
            self._close_quietly()

    def _run(self) -> RunOutcome:
        early = self._mark_running()
        if early is not None:
            return early
        try:
            self.proc = self._start()
        except OSError as exc:
            error = f"cannot start {self.argv[0]!r}: {exc.strerror or exc}"
            self._log_end(Status.FAILED.value, error)
            self._final(status=Status.FAILED.value, error=error)
            return RunOutcome(self.job_id, Status.FAILED.value, error=error, stopped_by="not started")
        call_hook(self.job_id, "on_start", self.options.on_start, self.proc.pid)
        self._watcher.start()
        try:
            timeout = self.options.timeout
            self.deadline = None if timeout is None else time.monotonic() + timeout
            OutputReader(self.job_id, self.proc, self._wake_r, on_line=self.output.on_line,
                         check=self._check_stop, deadline=self.deadline).read_until_exit()
        except BaseException as exc:  # RQ's job timeout, Ctrl-C, a bug: never leave the tree behind
            return self._end_by_exception(exc)
        return self._end()

    def _mark_running(self) -> RunOutcome | None:
        """The job ``running``; an outcome instead if it has finished already (not started)."""
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
        self.recovery.last_seq = first.seq
        self.recovery.read_spec()
        self._notify({"status": Status.RUNNING.value}, first)
        return None

    def _start(self) -> subprocess.Popen[bytes]:
        tag_name, _, tag_value = self.tag.partition("=")
        env = {**(os.environ if self.options.env is None else self.options.env),
               JOB_ID_ENV: self.job_id, tag_name: tag_value}
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, cwd=self.options.cwd,
                                env=env)
        logger.info("job %s: started pid %d: %s", self.job_id, proc.pid, _show(self.argv))
        return proc

    def _check_stop(self) -> None:
        """Raises ``Stop`` when the run must end: a stop asked for, or the deadline passed."""
        if self.stop_reason is not None:
            raise Stop(self.stop_reason)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.request_stop("timeout")
            raise Stop("timeout")

    def request_stop(self, reason: str) -> None:
        with self._stop_lock:
            if self.stop_reason is not None or self._finished.is_set():
                return
            self.stop_reason = reason
        logger.info("job %s: stopping the command (%s)", self.job_id, reason)
        with suppress(OSError):  # the wake-up pipe is closed: the run has ended meanwhile
            os.write(self._wake_w, b"x")

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
            result = {**(self.output.result or {}), "exit_code": 0}
            self._log_end(Status.COMPLETED.value, None)
            written = self._final(status=Status.COMPLETED.value, result=result)
            result = written.get("result", result)
            return RunOutcome(self.job_id, Status.COMPLETED.value, exit_code=0, result=result,
                              pid=proc.pid, survivors=survivors)
        error = self.output.failure_text(code)
        lines = error.splitlines()
        self._log_end(Status.FAILED.value,
                      lines[0] if len(lines) == 1 else f"{lines[0].split(':')[0]}: … {lines[-1]}")
        self._final(status=Status.FAILED.value, error=error)
        return RunOutcome(self.job_id, Status.FAILED.value, exit_code=code, error=error, pid=proc.pid,
                          survivors=survivors)

    def _end_by_exception(self, exc: BaseException) -> RunOutcome:
        proc = self.proc
        assert proc is not None
        reason = exc.args[0] if isinstance(exc, Stop) else None
        if reason is None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "exception"
            self.request_stop(reason)
        survivors = kill_process_tree(proc.pid, grace=self.options.kill_grace, popen=proc, tag=self.tag)
        self._finished.set()
        code = proc.returncode
        if reason == "timeout":
            timed_out = f"timed out after {self.options.timeout:g} s"
            self._log_end(Status.FAILED.value, timed_out)
            self._final(status=Status.FAILED.value, error=timed_out)
            return RunOutcome(self.job_id, Status.FAILED.value, exit_code=code, error=timed_out,
                              pid=proc.pid, survivors=survivors, stopped_by=reason)
        if isinstance(exc, Stop):  # canceled, failed or gone under us: the store's word stands
            return self._outcome_from_store(code, survivors)
        status, error, message = self._ending_of(exc)
        self._log_end(status, error or message)
        self._final(status=status, error=error, message=message)
        raise exc

    def _ending_of(self, exc: BaseException) -> tuple[str, str | None, str | None]:
        """The job's status, error and message after ``exc`` (Ctrl-C, or an exception
        raised into the run) ended it."""
        if isinstance(exc, KeyboardInterrupt):
            return Status.CANCELED.value, None, "interrupted"
        error = call_hook(self.job_id, "describe_exception", self.options.describe_exception, exc)
        return Status.FAILED.value, error or f"{type(exc).__name__}: {exc}", None

    def _outcome_from_store(self, code: int | None, survivors: list[int]) -> RunOutcome:
        try:
            snap = self.store.get(self.job_id) or {}
        except BackendUnavailable:
            snap = {}
        status = snap.get("status") or Status.CANCELED.value
        if status not in TERMINAL_VALUES:  # cannot happen unless forced back to life; say what we did
            status = Status.CANCELED.value
        self._log_end(status, f"by the store: {snap.get('error') or self.stop_reason}")
        pid = self.proc.pid if self.proc else None
        return RunOutcome(self.job_id, status, exit_code=code, error=snap.get("error"),
                          result=snap.get("result"), pid=pid, survivors=survivors,
                          stopped_by=self.stop_reason)

    def _log_end(self, status: str, detail: str | None) -> None:
        if detail:
            logger.info("job %s: %s -> %s (%s)", self.job_id, Status.RUNNING.value, status, detail)
        else:
            logger.info("job %s: %s -> %s", self.job_id, Status.RUNNING.value, status)

    def _kill_leftovers(self) -> list[int]:
        """After the command exited: processes it left behind (in its group, or
        double-forked away with this run's tag) are killed too."""
        assert self.proc is not None
        left = {*group_members(self.proc.pid), *tagged_processes(self.tag)} - {self.proc.pid}
        if not left:
            return []
        logger.info("job %s: the command left %d process(es) behind: killing them", self.job_id, len(left))
        return kill_process_tree(self.proc.pid, grace=min(self.options.kill_grace, 1.0), extra=left,
                                 tag=self.tag)

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
        deadline = time.monotonic() + max(5.0, self.options.settings.worker_lost_after)
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
            except (ProgressError, RedisError) as exc:  # refused: by the store's checks or by Redis
                kept = {k: v for k, v in (fields.get("result") or {}).items() if k == "exit_code"}
                if "result" in fields and fields["result"] != kept:
                    why = f"the pipeline's result was not stored: {exc}"
                    logger.warning("job %s: %s", self.job_id, why)
                    # overrides the refused values the throttle kept for the next try
                    fields = {**fields, "result": kept, "message": why}
                    continue
                logger.error("job %s: could not write the final state %r: %s", self.job_id, fields, exc)
                return fields

    # -- writes ----------------------------------------------------------------

    def _write(self, fields: dict[str, Any]) -> UpdateResult:
        """One store update (the throttle's writer: every write after the first comes here,
        under the throttle's lock, whichever thread makes it)."""
        result = self.store.update(self.job_id, **fields)
        if result.reason == "not_found" and self.recovery.spec is not None:
            self.recovery.recreate(fields)
            result = self.store.update(self.job_id, **fields)
        self.output.wrote()
        self.recovery.record(fields, result)
        if not result.accepted and result.reason in ("terminal", "not_found"):
            if fields.get("status") not in TERMINAL_VALUES:
                self.request_stop(result.reason)
        self._notify(fields, result)
        return result

    def _notify(self, fields: dict[str, Any], result: UpdateResult) -> None:
        call_hook(self.job_id, "on_write", self.options.on_write, fields, result)

    def _write_from_watcher(self) -> None:
        """The watcher found the job gone: a write through the throttle, serialised with
        the others, re-creates it there (``_write``)."""
        try:
            self.throttle.update(status=Status.RUNNING.value)
        except (*STORE_ERRORS, RuntimeError) as exc:  # Redis away again, or the throttle closed: the run ended
            logger.debug("job %s: write from the watcher failed: %s", self.job_id, exc)

    def _close_quietly(self) -> None:
        with suppress(*STORE_ERRORS):  # a pending write that fails now has been reported already
            self.throttle.close()  # stops a pending timer; a no-op when already closed
        self._watcher.join(timeout=1.0)
        with suppress(*STORE_ERRORS):  # counts only: lost if Redis is away at the very end
            self.store.flush_stats()
        for fd in (self._wake_r, self._wake_w):
            with suppress(OSError):  # closed already
                os.close(fd)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with suppress(OSError):  # a pipe a background process still holds
                        stream.close()


def _show(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
