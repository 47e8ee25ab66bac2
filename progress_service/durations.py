"""How long each step of a finished job took, read off its history.

    durations = step_durations(history, steps)   # {"fetch-paper": 0.012, ...} seconds
    total = job_duration(snapshot)               # finished_at - started_at, seconds, or None

One definition for every reader of the past (the ETA's step statistics, the
insights page, the Prometheus histograms): a step runs from the first history
entry that names it as ``current_step`` to the first later entry that names a
later step or a terminal status. A step the history never shows running (a job
that failed before it, a retry that skipped it, entries lost to the capped
history) has no duration: it is left out rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .models import TERMINAL_VALUES, ms_from_iso

__all__ = ["job_duration", "percentile", "step_durations"]


def _at_ms(entry: Mapping[str, Any]) -> int | None:
    at = entry.get("at")
    if isinstance(at, int) and not isinstance(at, bool):
        return at
    return ms_from_iso(at) if isinstance(at, str) else None


def step_durations(history: Iterable[Mapping[str, Any]], steps: Sequence[str]) -> dict[str, float]:
    """Seconds each step took, for the steps the history shows from start to end.

    ``history`` is the documented history (entries with ``seq``, ``at`` as ISO-8601
    or integer ms, ``current_step``, ``status``), oldest first. A step whose start is
    not in the history (the capped history dropped it) is left out, as is one the
    job never finished (a failure, a cancel).
    """
    order = {name: i for i, name in enumerate(steps)}
    out: dict[str, float] = {}
    current: str | None = None
    started_ms: int | None = None
    first = True
    for entry in history:
        at = _at_ms(entry)
        if at is None:
            continue
        step = entry.get("current_step")
        status = entry.get("status")
        # A history whose first entry is not the job's first change may start mid-step.
        truncated = first and int(entry.get("seq") or 1) > 1
        first = False
        if current is not None and started_ms is not None:
            moved_on = step in order and order[step] > order[current]
            if moved_on or status == "completed":
                out[current] = max(0.0, (at - started_ms) / 1000)
            if moved_on or status in TERMINAL_VALUES:
                current, started_ms = None, None
        if status in TERMINAL_VALUES:
            break
        if step in order and step != current and (current is None or order[step] > order[current]):
            current, started_ms = step, (None if truncated else at)
    return out


def job_duration(snapshot: Mapping[str, Any]) -> float | None:
    """Seconds from ``started_at`` to ``finished_at`` of a finished job, or None."""
    started = ms_from_iso(snapshot.get("started_at"))
    finished = ms_from_iso(snapshot.get("finished_at"))
    if started is None or finished is None:
        return None
    return max(0.0, (finished - started) / 1000)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) of ``values``, interpolated between the two nearest
    (PostgreSQL's ``percentile_cont``); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)
