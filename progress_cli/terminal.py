"""A live one-line progress bar in the terminal, drawn from the store's pub/sub.

    final = follow_job(store, job_id)          # draws on stderr until the job ends
    sys.exit(exit_code_for(final["status"]))   # 0 completed, 1 failed, 2 canceled

On a terminal the line is redrawn in place (``\\r``)::

    [#########.........]  45.0%  generate-audio (3/5)  ETA 12s

Elsewhere (a pipe, a log file) one line is printed per visible change.

While the job waits in its RQ queue, :class:`NoWorkerNotice` says so once when
no worker listens on that queue (the bar alone would sit at 0 % without a word).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
import time
from contextlib import suppress
from typing import Any, TextIO

from progress_cli import exit_codes
from progress_service import ProgressStore, Settings, Status

__all__ = ["EXIT_CODES", "NoWorkerNotice", "batch_lines", "exit_code_for", "follow_batch", "follow_job",
           "render_line", "render_total"]

EXIT_CODES = {Status.COMPLETED.value: exit_codes.COMPLETED, Status.FAILED.value: exit_codes.FAILED,
              Status.CANCELED.value: exit_codes.CANCELED}
BAR_WIDTH = 20
NO_WORKER_CHECK = 2.0  # seconds between two looks at the workers of a waiting job's queue


def exit_code_for(status: str) -> int:
    """0 completed, 1 failed, 2 canceled (1 for a job that has not ended)."""
    return EXIT_CODES.get(str(status), exit_codes.FAILED)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary_line(snap: dict[str, Any]) -> str:
    """One line for a finished job: ``<job_id> <status>[: error] [<video>]``.

    A many-line error shows its first and last lines (the pipeline's stderr tail).
    """
    line = f"{snap['job_id']} {snap['status']}"
    if snap.get("error"):
        lines = snap["error"].splitlines() or [""]
        line += f": {lines[0]}" if len(lines) == 1 else f": {lines[0]} … {lines[-1]}"
    result = snap.get("result") or {}
    where = result.get("video_path") or result.get("video_url")
    if where:
        line += f" {where}"
    return line


def render_line(snap: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """One line for a snapshot: bar, percent, step (i/n), then its ETA or how it ended."""
    percent = float(snap.get("progress_percent") or 0)
    filled = min(width, int(width * percent / 100))
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%"]
    status = snap.get("status")
    step = snap.get("current_step")
    steps = snap.get("steps") or []
    if step:
        position = f" ({steps.index(step) + 1}/{len(steps)})" if step in steps else ""
        parts.append(f"{step}{position}")
    if status == Status.RUNNING.value:
        eta = snap.get("eta_seconds")
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        if snap.get("is_stale"):
            parts.append("(stale)")
    elif status == Status.FAILED.value:
        error = (snap.get("error") or "").strip().splitlines()
        parts.append(f"failed: {error[0]}" if error else "failed")
    else:
        parts.append(str(status))
    return "  ".join(parts)


def is_tty(out: TextIO) -> bool:
    """Whether ``out`` is a terminal (a closed or odd stream is not)."""
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def follow_job(store: ProgressStore, job_id: str, out: TextIO | None = None, *,
               timeout: float | None = None, idle_check: float = 5.0) -> dict[str, Any]:
    """Draw ``job_id``'s progress on ``out`` (stderr) until it ends; return the final snapshot.

    The ETA is the store's ``eta_seconds``; while the job is quiet the line is redrawn
    every ``idle_check`` seconds from a fresh read, so a stall shows (the ETA grows,
    then "(stale)"). Raises ``JobNotFound`` for a job Redis does not hold, ``TimeoutError`` after
    ``timeout`` seconds.
    """
    out = sys.stderr if out is None else out
    tty = is_tty(out)
    last = None
    drawn = False
    snap: dict[str, Any] | None = None
    try:
        for snap in store.subscribe(job_id, timeout=timeout, idle_check=idle_check, derived=True):
            line = render_line(snap)
            if tty:
                columns = shutil.get_terminal_size((100, 24)).columns
                out.write("\r" + line[: max(columns - 1, 20)] + "\x1b[K")
                drawn = True
                out.flush()
            elif line != last:
                out.write(line + "\n")
                out.flush()
            last = line
    finally:
        if tty and drawn:
            out.write("\n")
            out.flush()
    assert snap is not None  # subscribe yields at least the current snapshot
    return snap


class NoWorkerNotice:
    """While ``job_id`` waits in its RQ queue, say once on ``out`` that no worker listens there.

        with NoWorkerNotice(settings, job_id, "submit"):
            final = follow_job(store, job_id)

    It looks every ``interval`` seconds, from a thread, and stops looking once the
    job has left the queue (a worker took it, it was canceled, or it was never
    queued).
    """

    def __init__(self, settings: Settings, job_id: str, command: str, out: TextIO | None = None,
                 interval: float = NO_WORKER_CHECK) -> None:
        self.settings = settings
        self.job_id = job_id
        self.command = command
        self.out = sys.stderr if out is None else out
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="no-worker-notice", daemon=True)

    def __enter__(self) -> NoWorkerNotice:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import redis

        from progress_service.queue import rq_connection, waiting_queue

        if importlib.util.find_spec("rq") is None:
            return  # RQ is not installed here: nothing was queued from here either
        conn = rq_connection(self.settings)
        try:
            while not self._stop.is_set():
                try:
                    queue = waiting_queue(self.job_id, conn)
                except redis.RedisError:
                    queue = {}  # Redis is away: the bar says so; look again later
                if queue is None:
                    return
                if queue and queue["workers"] == 0:
                    self._say(f"progress-service {self.command}: no worker is listening on queue "
                              f"{queue['name']!r}: job {self.job_id} waits until one starts "
                              "(progress-service worker)")
                    return
                self._stop.wait(self.interval)
        finally:
            conn.close()

    def _say(self, line: str) -> None:
        with suppress(OSError, ValueError):  # the terminal is gone (closed, SIGHUP): nothing to tell
            self.out.write(("\r\x1b[K" if is_tty(self.out) else "") + line + "\n")  # over the bar's line
            self.out.flush()


def render_total(batch: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """The batch's total line: bar, percent, counts, then the ETA or how it ended."""
    percent = float(batch.get("progress_percent") or 0)
    filled = min(width, int(width * percent / 100))
    counts = ", ".join(f"{batch[name]} {name}" for name in
                       ("completed", "failed", "canceled", "running", "pending") if batch[name])
    line = f"total [{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%  {counts}"
    if batch["status"] == Status.RUNNING.value and batch.get("eta_seconds") is not None:
        return f"{line}  ETA {_duration(batch['eta_seconds'])}"
    return line if batch["status"] == Status.RUNNING.value else f"{line}  {batch['status']}"


def batch_lines(batch: dict[str, Any], members: dict[str, dict[str, Any]], rows: int) -> list[str]:
    """One line per member while they fit in ``rows`` (less two), then a summary, then the total."""
    ids = batch["job_ids"]
    room = max(rows - 2, 1)
    shown = ids if len(ids) <= room + 1 else ids[:room]
    lines = []
    for job_id in shown:
        snap = members.get(job_id)
        label = (snap or {}).get("paper_id") or job_id
        lines.append(f"{label[:16]:<16} " + (render_line(snap) if snap else "(gone from Redis)"))
    if len(shown) < len(ids):
        rest = [members.get(j) for j in ids[len(shown):]]
        by_status: dict[str, int] = {}
        for snap in rest:
            status = (snap or {}).get("status") or "unknown"
            by_status[status] = by_status.get(status, 0) + 1
        lines.append(f"... and {len(rest)} more: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    lines.append(render_total(batch))
    return lines


def follow_batch(store: ProgressStore, batch_id: str, out: TextIO | None = None, *,
                 timeout: float | None = None) -> dict[str, Any]:
    """Draw the batch on ``out`` (stderr), one line per member and a total, until it has
    finished; return its final snapshot. Woken by the all-jobs pub/sub channel.

    Raises ``JobNotFound`` for a batch Redis does not hold, ``TimeoutError`` after
    ``timeout`` seconds.
    """
    from progress_service.batches import is_finished
    from progress_service.errors import BackendUnavailable, JobNotFound

    out = sys.stderr if out is None else out
    tty = is_tty(out)
    deadline = None if timeout is None else time.monotonic() + timeout
    drawn = 0
    last: list[str] = []
    with store.events() as feed:  # the all-jobs channel: a member's change redraws at once
        while True:
            batch = store.get_batch(batch_id)
            if batch is None:
                raise JobNotFound(f"batch {batch_id} not found")
            members = {s["job_id"]: s for s in store.get_many(batch["job_ids"])}
            size = shutil.get_terminal_size((100, 24))
            lines = batch_lines(batch, members, size.lines if tty else len(batch["job_ids"]) + 2)
            if tty:
                out.write((f"\x1b[{drawn}F" if drawn else "")
                          + "".join(line[: max(size.columns - 1, 20)] + "\x1b[K\n" for line in lines))
                drawn = len(lines)
            else:
                out.write("".join(line + "\n" for line in lines if line not in last))
            out.flush()
            last = lines
            if is_finished(batch):
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} did not finish within {timeout} s")
            wake_by = time.monotonic() + 1.0
            while time.monotonic() < wake_by:
                try:
                    event = feed.get(timeout=max(wake_by - time.monotonic(), 0.01))
                except BackendUnavailable:
                    time.sleep(0.5)  # Redis is away: the next read says so, or finds it back
                    break
                if event is not None and event.get("job_id") in members:
                    time.sleep(0.1)  # a burst of changes: draw once
                    break
