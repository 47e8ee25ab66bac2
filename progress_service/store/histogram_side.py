"""The duration histograms' side of the progress store (``progress_service.duration_histograms``).

``HistogramSide`` is a part of ``ProgressStore``, kept in a module of its own: its
methods use the store's client, keys, scripts and error mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..scripts import as_text as _text
from .part import StorePart


class HistogramSide(StorePart):
    """``ProgressStore``'s methods for the histograms every process shares."""

    def add_durations(self, series: Sequence[tuple[str, int, float, Mapping[str, int]]],
                      max_series: int) -> int:
        """Add ``(series, count, seconds, {bucket bound: count})`` groups in one script call
        (``lua/observe_durations-1.lua``); return how many series were kept."""
        args: list[str | int | float] = [max_series]
        for name, count, seconds, buckets in series:
            args += [name, count, repr(float(seconds)), len(buckets)]
            for bound, n in buckets.items():
                args += [bound, n]
        return int(self._call(self.scripts.observe_durations, [self.keys.durations], args))

    def read_durations(self) -> dict[str, str]:
        """The histograms' hash, field -> value."""
        raw = self._redis(lambda: self.client.hgetall(self.keys.durations))
        return {_text(k): _text(v) for k, v in raw.items()}
