"""TrackedTqdm: a real ``tqdm.tqdm`` bar that also reports its share of a tracked job's step.

Made by ``TrackedJob.tqdm`` (``progress_service.tracking``), the one module that
imports tqdm: the rest of the package works without it.

The bar draws as tqdm always does. Whenever tqdm itself updates the display
(``update``, which its iterator calls at most every ``mininterval``), and when the
bar closes, ``n / total`` goes to the job as the step's fraction done. A disabled
bar (``disable=True``, or ``disable=None`` off a terminal) skips all of tqdm's
counting, so there the bar counts and reports by itself, at most every
``REPORT_EVERY`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import tqdm

if TYPE_CHECKING:
    from .tracking import TrackedJob

REPORT_EVERY = 0.1  # seconds between two reports of a disabled bar


if TYPE_CHECKING:  # types-tqdm makes tqdm generic in its items; at run time it is not
    _Bar = tqdm.tqdm[Any]
else:
    _Bar = tqdm.tqdm


class TrackedTqdm(_Bar):
    def __init__(self, iterable: Iterable[Any] | None = None, *args: Any, job: TrackedJob,
                 step_index: int, **kwargs: Any) -> None:
        self._job = job
        self._step_index = step_index
        super().__init__(iterable, *args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if self.disable:  # tqdm counts nothing then: count here
            self.n += n or 0
            shown = None
        else:
            shown = super().update(n)
        self._report()
        return shown

    def close(self) -> None:
        self._report()
        super().close()

    def __iter__(self) -> Iterator[Any]:
        if not self.disable:
            yield from super().__iter__()  # calls update() as it redraws, close() at the end
            return
        n, next_report = self.n, 0.0
        try:
            for item in self.iterable:
                yield item
                n += 1
                now = time.monotonic()
                if now >= next_report:
                    self.n, next_report = n, now + REPORT_EVERY
                    self._report()
        finally:
            self.n = n
            self.close()

    def _report(self) -> None:
        total = getattr(self, "total", None)
        if total and total > 0:
            self._job.advance_in_step(self._step_index, self.n / total)
