"""The write throttle the worker uses (README, "The update rules").

The first change goes at once. Later percent-only changes inside
``min_interval`` are merged into one trailing write, made by a timer when the
interval has passed. A step change, a status change and the final state are
written at once (carrying any merged percent with them). Nothing is dropped:
:meth:`Throttle.close` writes whatever is still pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import BackendUnavailable, JobNotFound

logger = logging.getLogger(__name__)

Write = Callable[[dict[str, Any]], Any]


class Throttle:
    def __init__(
        self,
        write: Write,
        min_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``write(fields)`` performs one store update with the merged keyword fields."""
        self._write = write
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._last_write: float | None = None
        self._timer: threading.Timer | None = None
        self._closed = False

    def update(self, **fields: Any) -> None:
        """Offer one change; it is written now or merged into the trailing write."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if not fields:
            return
        urgent = bool(fields.keys() - {"progress_percent", "message"})
        with self._lock:
            if self._closed:
                raise RuntimeError("throttle is closed")
            self._pending.update(fields)
            now = self._clock()
            last = self._last_write
            if urgent or last is None or now - last >= self.min_interval or self.min_interval <= 0:
                self._flush_locked()
                return
            if self._timer is None:
                delay = self.min_interval - (now - last)
                self._timer = threading.Timer(max(delay, 0.0), self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write whatever is pending now (``store.track`` retries a failed write with it)."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Write the last pending value and stop the timer. Safe to call twice."""
        with self._lock:
            self._flush_locked()
            self._closed = True

    def cancel(self) -> None:
        """Drop whatever is pending and stop the timer: nothing more is written."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._pending = {}
            self._closed = True

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            try:
                self._flush_locked()
            except Exception:  # logged, and kept for the next write: nobody here to tell
                pass

    def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        fields, self._pending = self._pending, {}
        self._last_write = self._clock()
        try:
            self._write(fields)
        except Exception as exc:  # whatever the writer raised, it is raised again below
            # Keep the values for the next try: newer fields win over the failed ones.
            self._pending = {**fields, **self._pending}
            if isinstance(exc, ValueError):  # refused (InvalidInput): the caller decides
                logger.warning("throttled write refused, kept for the next try: %r: %s", fields, exc)
            elif isinstance(exc, BackendUnavailable | JobNotFound):  # the caller says so, once
                logger.debug("throttled write failed, kept for the next try: %r: %s", fields, exc)
            else:
                logger.exception("throttled write failed, kept for the next try: %r", fields)
            raise
