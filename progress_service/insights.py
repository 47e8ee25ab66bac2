"""Insights: how each pipeline's jobs went, read from PostgreSQL's ``progress_jobs``.

    since = parse_since("7d", now)                  # or an ISO-8601 time
    report = insights(mirror, since=since, now=now, pipeline=None)

For each pipeline with jobs that finished in the window ``[since, now)``:

- ``throughput``: jobs finished per bucket (an hour, or a day for a window over
  ``HOURLY_UP_TO``), by outcome, with the bucket's success rate;
- ``success_rate``: completed / (completed + failed) over the window (a canceled job
  is someone's decision, not a failure); null when neither happened;
- ``job_durations`` and ``step_durations``: p50 and p90 per bucket, of the
  ``durations.job_duration`` and ``durations.step_durations`` of the most recent
  ``MAX_JOBS`` finished jobs of the window (``sample`` says how many were read, and
  whether the window held more);
- ``failures``: the ``TOP_FAILURES`` most frequent error texts of failed jobs;
- ``slowest``: the ``SLOWEST`` longest of the jobs read.

``available`` names every pipeline with jobs in the window (busiest first), also
when the report is of one pipeline (``pipeline=``), which is then reported even
with no jobs.

The work is bounded: a window of at most ``MAX_WINDOW``, at most ``MAX_PIPELINES``
pipelines (the busiest), the counts and the failures as SQL aggregates, and the
durations from at most ``MAX_JOBS`` rows, whose histories PostgreSQL cuts down to the
entries where the step or the status changes (``step_durations`` needs no others).
Each query runs within the mirror's deadline: PostgreSQL down is ``PostgresUnavailable``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import job_duration, percentile, step_durations
from .errors import InvalidInput
from .models import TERMINAL_VALUES, iso_ms, validate_id

if TYPE_CHECKING:
    from .mirror import Mirror

__all__ = ["DEFAULT_WINDOW", "MAX_JOBS", "MAX_WINDOW", "insights", "parse_since"]

DEFAULT_WINDOW = timedelta(days=1)
MAX_WINDOW = timedelta(days=90)
HOURLY_UP_TO = timedelta(days=2)  # a longer window is drawn per day
MAX_JOBS = 2000  # finished jobs whose durations are read, at most, per answer
MAX_PIPELINES = 20
TOP_FAILURES = 10
SLOWEST = 10
MESSAGE_CHARS = 300  # a failure's text is grouped on its first characters
OUTCOMES = ("completed", "failed", "canceled")
_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_since(text: str | None, now: datetime) -> datetime:
    """The window's start: ``None`` or "" (``DEFAULT_WINDOW`` ago), a span back from ``now``
    ("90m", "24h", "7d", "2w"), or an ISO-8601 time ("2026-11-30T00:00:00Z"); at most
    ``MAX_WINDOW`` back, and before ``now``. ``InvalidInput`` names what is wrong."""
    if not text:
        return now - DEFAULT_WINDOW
    match = _RELATIVE.match(text)
    if match:
        span = timedelta(**{_UNITS[match[2]]: int(match[1])})
        if span > MAX_WINDOW:  # checked before the subtraction, which a large span would overflow
            raise InvalidInput(f"since may go back {MAX_WINDOW.days} days at most, got {text!r}")
        since = now - span
    else:
        try:
            since = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"since must be a span back from now (90m, 24h, 7d, 2w) or an ISO-8601 "
                               f"time, got {text!r}") from None
        if since.tzinfo is None:
            raise InvalidInput(f"since must name its time zone (2026-11-30T00:00:00Z), got {text!r}")
    if since >= now:
        raise InvalidInput(f"since must be in the past, got {text!r}")
    if now - since > MAX_WINDOW:
        raise InvalidInput(f"since may go back {MAX_WINDOW.days} days at most, got {text!r}")
    return since


def _iso(value: datetime) -> str:
    return iso_ms((value - _EPOCH) // _MS) or ""


def _buckets(since: datetime, now: datetime, unit: str) -> list[datetime]:
    """The start of every bucket from the one holding ``since`` to the one holding ``now``."""
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        start = start.replace(hour=0)
    out = []
    while start <= now:
        out.append(start)
        start += step
    return out


def _rate(completed: int, failed: int) -> float | None:
    return None if completed + failed == 0 else round(completed / (completed + failed), 4)


def _where(pipeline: str | None) -> str:
    return "finished_at >= %s AND finished_at < %s" + (" AND pipeline = %s" if pipeline else "")


# The rows of the most recent finished jobs, each history cut down to its first entry and
# those where the step or the status changes: what durations.step_durations reads.
SAMPLE_SQL = """
SELECT job_id, paper_id, pipeline, status, steps, started_at, finished_at,
  (SELECT coalesce(jsonb_agg(e ORDER BY o), '[]'::jsonb) FROM (
     SELECT e, o, lag(e->>'current_step') OVER (ORDER BY o) AS prev_step,
            lag(e->>'status') OVER (ORDER BY o) AS prev_status
     FROM jsonb_array_elements(history) WITH ORDINALITY AS h(e, o)) changes
   WHERE o = 1 OR e->>'current_step' IS DISTINCT FROM prev_step
      OR e->>'status' IS DISTINCT FROM prev_status) AS history
FROM progress_jobs WHERE {where} ORDER BY finished_at DESC LIMIT %s
"""

COUNTS_SQL = """
SELECT pipeline, date_trunc(%s, finished_at AT TIME ZONE 'UTC') AS bucket, status, count(*)
FROM progress_jobs WHERE {where} GROUP BY 1, 2, 3
"""

FAILURES_SQL = """
SELECT pipeline, message, n, last_at, last_job FROM (
  SELECT pipeline, message, count(*) AS n, max(finished_at) AS last_at,
         (array_agg(job_id ORDER BY finished_at DESC))[1] AS last_job,
         row_number() OVER (PARTITION BY pipeline ORDER BY count(*) DESC, max(finished_at) DESC) AS r
  FROM (SELECT pipeline, job_id, finished_at,
               left(coalesce(nullif(error, ''), nullif(message, ''), '(no message)'), {chars}) AS message
        FROM progress_jobs WHERE {where} AND status = 'failed') failed
  GROUP BY pipeline, message) ranked
WHERE r <= %s
"""


def insights(mirror: Mirror, *, since: datetime, now: datetime, pipeline: str | None = None,
             max_jobs: int = MAX_JOBS) -> dict[str, Any]:
    """The report described in the module docstring, as a JSON-ready dict."""
    if pipeline is not None:
        validate_id(pipeline, "pipeline")
    unit = "hour" if now - since <= HOURLY_UP_TO else "day"
    params: list[Any] = [since, now] + ([pipeline] if pipeline else [])
    where = _where(pipeline)
    # every pipeline's counts, so that the answer names them all (``available``)
    counts = mirror.select(COUNTS_SQL.format(where=_where(None)), [unit, since, now])
    failures = mirror.select(FAILURES_SQL.format(where=where, chars=MESSAGE_CHARS), [*params, TOP_FAILURES])
    sample = mirror.select(SAMPLE_SQL.format(where=where), [*params, max_jobs + 1])
    truncated = len(sample) > max_jobs
    sample = sample[:max_jobs]
    buckets = _buckets(since, now, unit)

    totals: dict[str, int] = defaultdict(int)
    for name, _bucket, _status, n in counts:
        totals[name] += n
    available = sorted(totals, key=lambda name: (-totals[name], name))[:MAX_PIPELINES]
    names = [pipeline] if pipeline else available
    report = {name: _pipeline_report(name, buckets) for name in names}
    index = {b: i for i, b in enumerate(buckets)}
    for name, bucket, status, n in counts:
        if name in report and status in OUTCOMES:
            i = index.get(bucket.replace(tzinfo=UTC))
            if i is not None:
                report[name]["throughput"][i][status] += n
            report[name]["finished"] += n
            report[name][status] += n
    for name, message, n, last_at, last_job in sorted(failures, key=lambda r: (-r[2], r[1])):
        if name in report:
            report[name]["failures"].append({"message": message, "count": n, "last_at": _iso(last_at),
                                             "last_job_id": last_job})
    _add_durations(report, sample, buckets, unit)
    for entry in report.values():
        entry["success_rate"] = _rate(entry["completed"], entry["failed"])
        for point in entry["throughput"]:
            point["success_rate"] = _rate(point["completed"], point["failed"])
    return {
        "since": _iso(since), "until": _iso(now), "bucket": unit, "pipeline": pipeline,
        "sample": {"jobs": len(sample), "max_jobs": max_jobs, "truncated": truncated},
        "available": available,
        "pipelines": [report[name] for name in names],
    }


def _pipeline_report(name: str, buckets: Sequence[datetime]) -> dict[str, Any]:
    return {
        "pipeline": name, "finished": 0, "completed": 0, "failed": 0, "canceled": 0,
        "success_rate": None,
        "throughput": [{"at": _iso(b), "completed": 0, "failed": 0, "canceled": 0} for b in buckets],
        "job_durations": [], "steps": [], "step_durations": [], "failures": [], "slowest": [],
    }


def _bucket_of(at: datetime, unit: str) -> datetime:
    at = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if unit == "day" else at


def _add_durations(report: dict[str, dict[str, Any]], rows: Iterable[Sequence[Any]],
                   buckets: Sequence[datetime], unit: str) -> None:
    """The sampled jobs' durations (durations.py's definitions) as p50/p90 per bucket."""
    jobs: dict[str, dict[datetime, list[float]]] = defaultdict(lambda: defaultdict(list))
    steps: dict[str, dict[str, dict[datetime, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    order: dict[str, list[str]] = {}
    slow: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job_id, paper_id, name, status, step_names, started_at, finished_at, history in rows:
        if name not in report or status not in TERMINAL_VALUES:
            continue
        bucket = _bucket_of(finished_at, unit)
        snapshot = {"started_at": started_at and _iso(started_at), "finished_at": _iso(finished_at)}
        total = job_duration(snapshot)
        if total is not None:
            jobs[name][bucket].append(total)
            slow[name].append({"job_id": job_id, "paper_id": paper_id, "status": status,
                               "duration_seconds": round(total, 3), "finished_at": snapshot["finished_at"]})
        order.setdefault(name, list(step_names or []))  # the newest job's steps, in order
        for step, seconds in step_durations(history or [], list(step_names or [])).items():
            steps[name][step][bucket].append(seconds)
    for name, entry in report.items():
        entry["job_durations"] = _series(jobs.get(name, {}), buckets)
        known = order.get(name, [])
        names = known + sorted(s for s in steps.get(name, {}) if s not in known)
        entry["steps"] = [s for s in names if s in steps.get(name, {})]
        entry["step_durations"] = [{"step": s, "points": _series(steps[name][s], buckets)}
                                   for s in entry["steps"]]
        entry["slowest"] = sorted(slow.get(name, []), key=lambda j: -j["duration_seconds"])[:SLOWEST]


def _series(values: dict[datetime, list[float]], buckets: Sequence[datetime]) -> list[dict[str, Any]]:
    """p50 and p90 per bucket (null where no job finished)."""
    out = []
    for b in buckets:
        found = values.get(b, [])
        p50, p90 = percentile(found, 50), percentile(found, 90)
        out.append({"at": _iso(b), "jobs": len(found),
                    "p50": None if p50 is None else round(p50, 3),
                    "p90": None if p90 is None else round(p90, 3)})
    return out
