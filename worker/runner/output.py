"""What the command prints: progress lines become store writes, stderr is kept for errors.

Each line goes through ``parse_line`` and ``ProgressTracker``; what changes goes to
the store through ``progress_service.Throttle``: a step change at once, percent-only
changes at most every ``settings.min_interval`` seconds, and nothing dropped at the
end. Lines that are not ours are ignored; lines in the progress protocol that say
something impossible are warned about a few times per job.
"""

from __future__ import annotations

import signal
from collections import deque
from typing import Any

from progress_service import Throttle
from worker.parser import LineKind, ParsedLine, ProgressTracker, TrackerUpdate, parse_line
from worker.runner.options import STORE_ERRORS, RunOptions, call_hook, logger

TAIL_LINES = 20  # stderr lines kept for a failure's error
TAIL_CHARS = 2000
TAIL_LINE_CHARS = 300
REFUSED_WARNINGS = 5  # lines that looked like ours but were refused, logged at WARNING per job


class OutputHandler:
    """One job's output, line by line (``on_line``), written through ``throttle``."""

    def __init__(self, job_id: str, options: RunOptions, throttle: Throttle) -> None:
        self.job_id = job_id
        self.on_output = options.on_output
        self.throttle = throttle
        self.tracker = ProgressTracker(options.steps, options.weights)
        self.result: dict[str, Any] | None = None  # the pipeline's result line, if it printed one
        self.written_step: str | None = None
        self.written_message: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)  # lines that are not progress
        self.stderr_any: deque[str] = deque(maxlen=TAIL_LINES)
        self.write_failing = False
        self.refused_lines = 0

    def on_line(self, stream: str, line: str) -> None:
        call_hook(self.job_id, "on_output", self.on_output, stream, line)
        parsed = parse_line(line)
        if stream == "stderr":
            self._keep_stderr(line, parsed)
        if parsed is None:
            return
        if parsed.kind is LineKind.IGNORED:
            self._refused(line, parsed.reason or "not understood")
            return
        if parsed.result is not None:
            self.result = parsed.result
        update = self.tracker.feed(parsed)
        if update is None:
            self._not_applied(line)
        else:
            self._write(self._changes(update))

    def wrote(self) -> None:
        """A store write went through (whichever thread made it)."""
        if self.write_failing:
            logger.info("job %s: progress writes go through again", self.job_id)
            self.write_failing = False
        self.refused_lines = 0

    def failure_text(self, code: int) -> str:
        """A failed command's error: how it ended, then the last lines of its stderr."""
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            head = f"killed by {name}"
        else:
            head = f"exit code {code}"
        tail = "\n".join(self.stderr_tail or self.stderr_any)
        if len(tail) > TAIL_CHARS:
            tail = "…" + tail[-(TAIL_CHARS - 1):]
        return f"{head}: {tail}" if tail else f"{head} (nothing on stderr)"

    def _keep_stderr(self, line: str, parsed: ParsedLine | None) -> None:
        short = line if len(line) <= TAIL_LINE_CHARS else line[: TAIL_LINE_CHARS - 1] + "…"
        self.stderr_any.append(short)
        if parsed is None or parsed.kind is LineKind.IGNORED:
            self.stderr_tail.append(short)

    def _not_applied(self, line: str) -> None:
        reason = self.tracker.last_ignored_reason
        if reason and reason.startswith("unknown step"):
            self._refused(line, reason)  # a pipeline bug, like PROGRESS 150
        elif reason:  # a bar restarting lower, a late PROGRESS: ordinary, nothing moves back
            logger.debug("job %s: ignored line: %s", self.job_id, reason)

    def _changes(self, update: TrackerUpdate) -> dict[str, Any]:
        fields: dict[str, Any] = {"progress_percent": update.progress_percent}
        if update.current_step is not None and update.current_step != self.written_step:
            fields["current_step"] = update.current_step
            self.written_step = update.current_step
            logger.info("job %s: step %s", self.job_id, update.current_step)
        if update.message is not None and update.message != self.written_message:
            fields["message"] = update.message
            self.written_message = update.message
        return fields

    def _write(self, fields: dict[str, Any]) -> None:
        try:
            self.throttle.update(**fields)
        except STORE_ERRORS as exc:  # Redis away: the throttle keeps the values for the next write
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
