"""Histograms of job and step durations, shared by every process through Redis.

A web app runs several gunicorn workers, each with its own Prometheus registry:
a histogram kept in one process would tell a scrape only what that process saw.
So the numbers live in one Redis hash (``Keys.durations``). The mirror adds each
job once, when its row first lands in PostgreSQL (``Mirror``, through
:func:`record_landed`), and ``/metrics`` reads the hash at scrape time
(``web.metrics``)::

    record_landed(store, [(snapshot, history), ...])   # the mirror, after its upsert
    for h in read_histograms(store): ...               # a scrape: cumulative buckets

Three kinds of series:

- ``job``: a finished job's duration (``durations.job_duration``) by pipeline and outcome
  (its terminal status); a job that never started has none;
- ``step``: each step's duration (``durations.step_durations``) by pipeline and step;
- ``finished``: a plain count of finished jobs by pipeline and outcome, those that
  never started included.

At most ``MAX_SERIES`` label sets are kept (step names come from producers): the
observations of a new series past that are dropped, and logged.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .durations import job_duration, step_durations
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from .store import ProgressStore

logger = logging.getLogger(__name__)

__all__ = ["JOB_BUCKETS", "MAX_SERIES", "STEP_BUCKETS", "DurationHistogram", "observations",
           "read_histograms", "record_landed"]

# Upper bounds, in seconds (the last bucket, +Inf, is implied): jobs run for minutes to hours.
JOB_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
STEP_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
BUCKETS = {"job": JOB_BUCKETS, "step": STEP_BUCKETS}
INF = "+Inf"
MAX_SERIES = 2000
SERIES_FIELD = "#series"  # the hash's count of its series (lua/observe_durations-1.lua)

Observation = tuple[str, str, float]  # (series: a JSON list of kind and labels, bucket bound, seconds)


@dataclass
class DurationHistogram:
    """One series as a scrape exports it: ``buckets`` are cumulative ``(bound, count)``
    pairs ending with ``("+Inf", count)`` (empty for a ``finished`` count)."""

    kind: str  # job | step | finished
    labels: tuple[str, ...]  # job, finished: (pipeline, outcome); step: (pipeline, step)
    count: int = 0
    sum: float = 0.0
    buckets: list[tuple[str, int]] = field(default_factory=list)


def bound_text(bound: float) -> str:
    """A bucket's upper bound as the hash's field and Prometheus' ``le`` spell it ("0.5", "60.0")."""
    return repr(float(bound))


def _bucket(kind: str, seconds: float) -> str:
    bounds = BUCKETS[kind]
    i = bisect.bisect_left(bounds, seconds)  # the first bound >= seconds (Prometheus' le)
    return bound_text(bounds[i]) if i < len(bounds) else INF


@functools.lru_cache(maxsize=4096)  # the same few pipelines and steps, job after job
def _series(kind: str, *labels: str) -> str:
    return json.dumps([kind, *labels], separators=(",", ":"), ensure_ascii=False)


def _grouped(found: Iterable[Observation]) -> list[tuple[str, int, float, dict[str, int]]]:
    """Observations added up per series: (series, count, seconds, {bucket bound: count})."""
    groups: dict[str, tuple[list[float], dict[str, int]]] = {}
    for series, bound, seconds in found:
        totals, buckets = groups.setdefault(series, ([0, 0.0], {}))
        totals[0] += 1
        totals[1] += seconds
        if bound:
            buckets[bound] = buckets.get(bound, 0) + 1
    return [(series, int(totals[0]), totals[1], buckets) for series, (totals, buckets) in groups.items()]


def observations(snapshot: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> list[Observation]:
    """What one finished job adds to the histograms: its count, its duration, its steps'."""
    pipeline, outcome = str(snapshot["pipeline"]), str(snapshot["status"])
    out: list[Observation] = [(_series("finished", pipeline, outcome), "", 0.0)]
    total = job_duration(snapshot)
    if total is not None:
        out.append((_series("job", pipeline, outcome), _bucket("job", total), total))
    for step, seconds in step_durations(history, list(snapshot.get("steps") or [])).items():
        out.append((_series("step", pipeline, step), _bucket("step", seconds), seconds))
    return out


def record_landed(store: ProgressStore, jobs: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]
                  ) -> int:
    """Add jobs that just landed in PostgreSQL, each ``(snapshot, history)``, to the histograms,
    added up per series first (one script call, a few fields per series).

    The mirror's hook: a failure is logged, never raised (the rows have landed;
    only their share of the metrics is lost). Returns how many series were kept.
    """
    groups = _grouped(o for snapshot, history in jobs for o in observations(snapshot, history))
    if not groups:
        return 0
    try:
        kept = store.add_durations(groups, MAX_SERIES)
    except BackendUnavailable as exc:
        logger.warning("metrics: %d finished jobs left out of the duration histograms: %s", len(jobs), exc)
        return 0
    if kept < len(groups):
        logger.warning("metrics: the duration histograms hold %d series already; the observations "
                       "of %d new ones dropped", MAX_SERIES, len(groups) - kept)
    return kept


def read_histograms(store: ProgressStore) -> list[DurationHistogram]:
    """Every series of the shared hash, sorted, with cumulative buckets (``BackendUnavailable``
    when Redis does not answer)."""
    found: dict[str, DurationHistogram] = {}
    per_bucket: dict[str, dict[str, int]] = {}
    for name, value in store.read_durations().items():
        series, sep, part = name.rpartition("|")
        if not sep:
            continue  # SERIES_FIELD
        try:
            kind, *labels = json.loads(series)
        except (ValueError, TypeError):
            continue
        if kind not in ("job", "step", "finished") or len(labels) != 2:
            continue
        h = found.setdefault(series, DurationHistogram(kind, (str(labels[0]), str(labels[1]))))
        if part == "count":
            h.count = int(value)
        elif part == "sum":
            h.sum = float(value)
        else:
            per_bucket.setdefault(series, {})[part] = int(value)
    for series, h in found.items():
        if h.kind == "finished":
            continue
        counts = per_bucket.get(series, {})
        running = 0
        for bound in BUCKETS[h.kind]:
            running += counts.get(bound_text(bound), 0)
            h.buckets.append((bound_text(bound), running))
        h.buckets.append((INF, h.count))
    return sorted(found.values(), key=lambda h: (h.kind, h.labels))
