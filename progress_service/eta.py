"""A job's ETA: its own rate, and how long its pipeline's steps took in past jobs.

    est = estimate(job, now_ms, stats, recent)    # Estimate(seconds, source)
    est = pending_estimate(stats, place)          # a job still waiting in the queue
    rate_eta(status, progress, now_ms, recent)    # the job's own rate alone

Every function here is pure: the clock (``now_ms``, the Redis server's), the statistics
(``progress_service.step_stats``) and the job's recent progress come in as arguments.

A running job, with statistics of its pipeline:

- **history**: what is left of the current step, plus the typical (p50) duration of every
  step after it. What is left of the current step comes from the job's own progress within
  it (the bar's position between where the step typically starts and where the next one
  does): ``(1 - f) * typical``, mixed with the step's own pace so far
  (``time in step * (1 - f) / f``) by ``f``. A step that shows no progress of its own is
  timed from its start (``step_started_ms``): ``typical - time in step``, at least 0.
- **rate**: the job's live rate, measured in typical seconds of work per second over its
  recent progress (the same window as the rate-only ETA), so that steps of very different
  speeds do not fool it: the typical work left (the statistics' p50 of what the bar has
  not passed) over that rate.
- **blend**: ``(1 - w) * history + w * by rate``, where ``w`` is the share of the job's
  typical work done: early on the past decides, late the job's own pace.

``source`` says what the number rests on: ``"blend"`` (both), ``"history"`` (no usable rate
yet: the job has not moved), ``"rate"`` (no statistics: the bar's own rate, as before
the statistics existed), or None (a finished job, or nothing known).

A pending job: the typical job duration, plus its wait, when its place in the queue is
known: ``ahead * typical / workers`` (None if no worker listens).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .models import Status, event_to_snapshot, ms_from_iso
from .step_stats import StepStats

__all__ = ["ETA_POINTS", "Estimate", "JobState", "LiveEta", "QueuePlace", "batch_eta", "estimate",
           "estimate_fields", "pending_estimate", "rate_eta"]

ETA_POINTS = 20  # running events a LiveEta keeps
RATE, HISTORY, BLEND = "rate", "history", "blend"
PENDING, RUNNING = Status.PENDING.value, Status.RUNNING.value


class Estimate(NamedTuple):
    seconds: float | None
    source: str | None  # "rate" | "history" | "blend" | None


NOTHING = Estimate(None, None)


class QueuePlace(NamedTuple):
    """Where a pending job waits: how many jobs are ahead of it, how many workers listen."""

    ahead: int
    workers: int


@dataclass(frozen=True)
class JobState:
    """What the estimator reads of a job."""

    status: str
    progress: float
    steps: Sequence[str]
    current_step: str | None
    completed: int  # how many steps are done
    step_started_ms: int | None = None  # when the current step began (Redis clock)


def _rounded(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(max(seconds, 0.0), 2)


def rate_eta(status: str, progress: float, now_ms: int, recent: Sequence[tuple[int, float]]) -> float | None:
    """Seconds left at the rate seen over the job's recent history, or None if unknown.

    The rate is measured from the oldest running entry in ``recent`` to now, so
    a job that has stopped moving sees its ETA grow instead of freezing.
    """
    if status != RUNNING or progress >= 100 or not recent:
        return None
    first_at, first_progress = recent[0]
    elapsed = (now_ms - first_at) / 1000
    gained = progress - first_progress
    if elapsed <= 0 or gained <= 0:
        return None
    return _rounded((100 - progress) * elapsed / gained)


# -- history -----------------------------------------------------------------------------


class Layout(NamedTuple):
    """A job's steps as its pipeline's statistics know them: each one's typical seconds (None:
    no job timed it), and where the bar typically starts and ends it (percent)."""

    typical: tuple[float | None, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    total: float | None  # the whole job's typical work (None: a step is untimed)


def layout(stats: StepStats, steps: Sequence[str]) -> Layout:
    """:class:`Layout` of ``steps``, computed once per statistics and steps (``stats.memo``)."""
    key = ("layout", tuple(steps))
    found = stats.memo.get(key)
    if found is None:
        n = len(steps)
        times = [stats.step_times.get(s) for s in steps]
        low = tuple(t.start_percent if t is not None else 100.0 * i / n for i, t in enumerate(times))
        high = tuple(max(low[i + 1] if i + 1 < n else 100.0, low[i]) for i in range(n))
        typical = tuple(None if t is None else t.p50 for t in times)
        total = None if None in typical else sum(t or 0.0 for t in typical)
        found = Layout(typical, low, high, total)
        if len(stats.memo) < 16:  # a pipeline's jobs share their steps: one or two entries
            stats.memo[key] = found
    return found


def _position(job: JobState) -> int | None:
    """The index of the step the job is in (None: past the last one)."""
    if job.current_step is not None and job.current_step in job.steps:
        return list(job.steps).index(job.current_step)
    return job.completed if job.completed < len(job.steps) else None


def _fraction(lay: Layout, index: int, progress: float) -> float:
    low, high = lay.low[index], lay.high[index]
    if high <= low:
        return 0.0
    return min(max((progress - low) / (high - low), 0.0), 1.0)


def work_done(lay: Layout, progress: float) -> float | None:
    """Typical seconds of work behind a bar at ``progress``: the typical durations of the
    steps the bar has passed, and the share of the one it is in."""
    done = 0.0
    last = len(lay.typical) - 1
    for i, typical in enumerate(lay.typical):
        if typical is None:
            return None
        if progress >= lay.high[i] and i < last:
            done += typical
            continue
        return done + typical * _fraction(lay, i, progress)
    return done


def history_remaining(job: JobState, now_ms: int, stats: StepStats) -> float | None:
    """Seconds left by the statistics (see the module docstring), or None if a step left
    to run has no typical duration."""
    index = _position(job)
    if index is None:
        return 0.0
    lay = layout(stats, job.steps)
    typical = lay.typical[index:]
    if None in typical:
        return None
    current = typical[0] or 0.0
    later = sum(t or 0.0 for t in typical[1:])
    f = _fraction(lay, index, job.progress) if job.current_step == job.steps[index] else 0.0
    in_step = None if job.step_started_ms is None else max((now_ms - job.step_started_ms) / 1000, 0.0)
    if f > 0 and in_step:
        own_pace = in_step * (1 - f) / f
        left = (1 - f) * ((1 - f) * current) + f * own_pace
    elif f > 0:
        left = (1 - f) * current
    elif in_step is not None:
        left = max(current - in_step, 0.0)
    else:
        left = current
    return left + later


def _by_rate(job: JobState, now_ms: int, lay: Layout, total: float,
             recent: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """(typical work done, the typical work left over the job's live rate in typical work per
    second: seconds left at that rate)."""
    if not recent:
        return None
    at, then = recent[0]
    now_work, then_work = work_done(lay, job.progress), work_done(lay, then)
    elapsed = (now_ms - at) / 1000
    if now_work is None or then_work is None or elapsed <= 0 or now_work <= then_work:
        return None
    return now_work, max(total - now_work, 0.0) * elapsed / (now_work - then_work)


def estimate(job: JobState, now_ms: int, stats: StepStats | None,
             recent: Sequence[tuple[int, float]] = ()) -> Estimate:
    """The ETA of a running job (see the module docstring); a job in any other state gets
    :func:`pending_estimate` (pending) or nothing (finished)."""
    if job.status == PENDING:
        return pending_estimate(stats)
    if job.status != RUNNING:
        return NOTHING
    rate = rate_eta(job.status, job.progress, now_ms, recent)
    history = None if stats is None or not stats.steps else history_remaining(job, now_ms, stats)
    if history is None or stats is None:
        return Estimate(rate, RATE) if rate is not None else NOTHING
    lay = layout(stats, job.steps)
    total = lay.total
    live = _by_rate(job, now_ms, lay, total, recent) if total else None
    if live is None or not total:
        return Estimate(_rounded(history), HISTORY)
    done, by_rate = live
    weight = min(max(done / total, 0.0), 1.0)
    return Estimate(_rounded((1 - weight) * history + weight * by_rate), BLEND)


def pending_estimate(stats: StepStats | None, place: QueuePlace | None = None) -> Estimate:
    """A pending job's ETA: its typical duration, plus ``ahead * typical / workers`` when its
    place in the queue is known. Nothing while no worker listens on its queue."""
    typical = None if stats is None else stats.typical_job
    if typical is None:
        return NOTHING
    if place is None:
        return Estimate(_rounded(typical), HISTORY)
    if place.workers <= 0:
        return NOTHING
    return Estimate(_rounded(typical + place.ahead * typical / place.workers), HISTORY)


def estimate_fields(fields: Mapping[str, str], now_ms: int, stats: StepStats | None,
                    recent: Sequence[tuple[int, float]] = (), steps: Sequence[str] | None = None) -> Estimate:
    """:func:`estimate` of a job hash (decoded field -> value); ``steps`` when already parsed."""
    started = fields.get("step_started_ms")
    job = JobState(
        status=fields.get("status") or PENDING,
        progress=float(fields.get("progress_percent") or 0),
        steps=steps if steps is not None else json.loads(fields.get("steps") or "[]"),
        current_step=fields.get("current_step") or None,
        completed=int(fields.get("completed_count") or 0),
        step_started_ms=int(started) if started else None,
    )
    return estimate(job, now_ms, stats, recent)


def batch_eta(running: Sequence[JobState], pending: int, now_ms: int, stats: StepStats | None) -> float | None:
    """A batch's ETA from its members: each running member's seconds left by the statistics
    and a typical job per pending member, shared among as many workers as members run now
    (at least one); never less than the slowest running member. None without statistics."""
    typical = None if stats is None else stats.typical_job
    if stats is None or typical is None:
        return None
    left = []
    for job in running:
        seconds = history_remaining(job, now_ms, stats)
        if seconds is None:
            return None
        left.append(seconds)
    if not left and not pending:
        return None
    share = (sum(left) + pending * typical) / max(len(left), 1)
    return _rounded(max([share, *left]))


# -- event followers ---------------------------------------------------------------------


class LiveEta:
    """``eta_seconds`` and ``eta_source`` kept up to date from a job's events, for whoever
    follows them (``web.fanout``): an event carries no ETA, so it is estimated again
    (:func:`estimate`) from the last ``ETA_POINTS`` running points seen, the step changes
    seen (when the current step began) and the pipeline's statistics (``stats_for``, e.g.
    ``ProgressStore.step_stats``; None: the rate alone).
    """

    def __init__(self, stats_for: Callable[[str], StepStats | None] | None = None) -> None:
        self.points: deque[tuple[int, float]] = deque(maxlen=ETA_POINTS)
        self.stats_for = stats_for
        self.step_started_ms: int | None = None

    def seed(self, snapshot: dict[str, Any]) -> None:
        """Take a point from a snapshot read from the store (its last progress)."""
        if snapshot["status"] != RUNNING:
            return
        try:
            at_ms = ms_from_iso(snapshot.get("progress_updated_at"))
        except ValueError:
            return
        if at_ms is not None:
            self.points.append((at_ms, float(snapshot["progress_percent"])))

    def advance(self, previous: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        """:func:`event_to_snapshot`, with the ETA as of this event (the previous estimate
        where it gives none yet)."""
        snapshot = event_to_snapshot(previous, event)
        at_ms = event.get("progress_updated_at_ms")
        if snapshot["status"] != RUNNING or at_ms is None:
            return snapshot
        at_ms = int(at_ms)
        if snapshot.get("current_step") != previous.get("current_step"):
            self.step_started_ms = at_ms
        progress = float(snapshot["progress_percent"])
        self.points.append((at_ms, progress))
        pipeline = snapshot.get("pipeline")
        stats = self.stats_for(pipeline) if self.stats_for is not None and pipeline else None
        job = JobState(RUNNING, progress, snapshot.get("steps") or [], snapshot.get("current_step"),
                       len(snapshot.get("completed_steps") or []), self.step_started_ms)
        est = estimate(job, at_ms, stats, list(self.points))
        if est.seconds is not None:
            snapshot["eta_seconds"], snapshot["eta_source"] = est.seconds, est.source
        return snapshot
