"""The reading loop: a command's stdout and stderr, read concurrently until it exits.

One ``selectors`` loop reads both pipes and a wake-up pipe (written by whoever asks
the run to stop); ``worker.parser.LineSplitter`` cuts the bytes into lines (``\\r``
redraws are lines; partial lines, invalid UTF-8 and lines up to ``MAX_LINE_BYTES``
survive). Before each wait, ``check()`` raises ``Stop`` when the run must end (a
stop asked for, the deadline passed).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable

from worker.parser import LineSplitter
from worker.runner.options import logger

MAX_LINE_BYTES = 1 << 20  # a line longer than this keeps its first MiB
READ_SIZE = 1 << 16
DRAIN_AFTER_EXIT = 1.0  # seconds to keep reading after the command exited (a grandchild may hold the pipes)


class OutputReader:
    """Reads ``proc``'s two pipes line by line into ``on_line(stream, line)`` until it exits."""

    def __init__(
        self,
        job_id: str,
        proc: subprocess.Popen[bytes],
        wake_fd: int,
        *,
        on_line: Callable[[str, str], None],
        check: Callable[[], None],
        deadline: float | None,
    ) -> None:
        self.job_id = job_id
        self.proc = proc
        self.wake_fd = wake_fd
        self.on_line = on_line
        self.check = check  # raises Stop when the run must end
        self.deadline = deadline  # time.monotonic() value: select waits no longer than this
        self.splitters = {"stdout": LineSplitter(MAX_LINE_BYTES), "stderr": LineSplitter(MAX_LINE_BYTES)}
        self.open_streams = 0
        self.exited_at: float | None = None

    def read_until_exit(self) -> None:
        """Every line, then the command's exit. Raises ``Stop`` (from ``check``) to end early."""
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(self.wake_fd, selectors.EVENT_READ, "wake")
            self.open_streams = 2
            while self.open_streams and not self._given_up():
                for key, _ in sel.select(self._wait()):
                    self._read(sel, key)
        for name, splitter in self.splitters.items():
            for line in splitter.close():
                self.on_line(name, line)
        self._wait_for_exit()

    def _given_up(self) -> bool:
        """True once the command has exited and its pipes stayed open ``DRAIN_AFTER_EXIT`` s."""
        self.check()
        now = time.monotonic()
        if self.exited_at is None and self.proc.poll() is not None:
            self.exited_at = now
        if self.exited_at is None or now - self.exited_at <= DRAIN_AFTER_EXIT:
            return False
        logger.debug("job %s: the command exited; its pipes are still open (a background "
                     "process holds them): not waiting for them", self.job_id)
        return True

    def _wait(self) -> float:
        wait = 0.25 if self.exited_at is None else 0.05
        if self.deadline is not None:
            wait = max(0.0, min(wait, self.deadline - time.monotonic()))
        return wait

    def _read(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        name = key.data
        if name == "wake":
            os.read(self.wake_fd, 512)
            return
        data = os.read(key.fd, READ_SIZE)
        if data:
            lines = self.splitters[name].feed(data)
        else:
            sel.unregister(key.fileobj)
            self.open_streams -= 1
            lines = self.splitters[name].close()
        for line in lines:
            self.on_line(name, line)

    def _wait_for_exit(self) -> None:
        """The pipes are closed (or given up on); the command may still run: wait for it
        as watchfully as it was read."""
        while True:
            try:
                self.proc.wait(timeout=0.1)
                return
            except subprocess.TimeoutExpired:
                self.check()
