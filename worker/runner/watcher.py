"""The watcher: a thread beside the reading loop, for heartbeats and a cancel from anywhere.

Every ``settings.heartbeat_interval`` seconds it stamps ``store.heartbeat`` and flushes
the update statistics; in between it listens on the job's channel. When the job turns
terminal under the run (a cancel from anywhere, a sweeper's ``worker lost``), it asks
the run to stop, which kills the whole process tree. A heartbeat that finds no job
(the store lost it) asks for it to be re-created instead (``worker.runner.recovery``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress

from progress_service import ProgressStore
from progress_service.models import TERMINAL_VALUES
from progress_service.store import EventFeed
from worker.runner.options import STORE_ERRORS, logger

LISTEN_SLICE = 0.2  # seconds, at most, between two looks at whether the run has finished


class Watcher:
    """Watches job ``job_id`` until ``finished`` is set, in a daemon thread (``start``)."""

    def __init__(
        self,
        store: ProgressStore,
        job_id: str,
        *,
        interval: float,
        finished: threading.Event,
        stop: Callable[[str], None],
        recreate: Callable[[], None],
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.finished = finished
        self.stop = stop  # asks the run to stop, saying why
        self.recreate = recreate  # a write that re-creates the job the store lost
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        feed = self._listen()
        next_beat = 0.0
        try:
            while not self.finished.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.interval
                    if self._beat_finds_it_finished():
                        self.stop("finished in the store")
                        return
                wait = max(0.0, min(next_beat - time.monotonic(), LISTEN_SLICE))
                if self._terminal_event(feed, wait) and not self.finished.is_set():
                    self.stop("finished in the store")
                    return
        finally:
            if feed is not None:
                with suppress(*STORE_ERRORS):  # a broken connection; we are leaving anyway
                    feed.close()

    def _listen(self) -> EventFeed | None:
        """The job's events, or None (then heartbeats alone tell)."""
        try:
            return self.store.events(self.job_id)
        except STORE_ERRORS as exc:
            logger.warning("job %s: cannot listen for a cancel (%s); relying on heartbeats", self.job_id, exc)
            return None

    def _beat_finds_it_finished(self) -> bool:
        """One heartbeat; True when the job has finished in the store (the run must stop)."""
        try:
            alive = self.store.heartbeat(self.job_id)
            self.store.flush_stats()
            self._warned = False
        except STORE_ERRORS as exc:
            if not self._warned:
                logger.warning("job %s: heartbeat failed: %s", self.job_id, exc)
                self._warned = True
            return False
        if alive or self.finished.is_set():
            return False
        state = self._state_in_store()
        if state == "missing":  # the store lost it: re-created by this write
            self.recreate()
            return False
        return state in TERMINAL_VALUES

    def _state_in_store(self) -> str | None:
        """The job's status in the store, "missing" if it has none, None if unreadable."""
        try:
            snap = self.store.get(self.job_id)
        except STORE_ERRORS:
            return None  # the next heartbeat asks again
        return "missing" if snap is None else snap["status"]

    def _terminal_event(self, feed: EventFeed | None, wait: float) -> bool:
        """Waits up to ``wait`` s for the job's next event; True if it shows the job finished."""
        if feed is None:
            self.finished.wait(wait)
            return False
        try:
            event = feed.get(timeout=wait)
        except STORE_ERRORS:  # Redis away: the next get reconnects
            self.finished.wait(wait)
            return False
        return event is not None and event.get("status") in TERMINAL_VALUES
