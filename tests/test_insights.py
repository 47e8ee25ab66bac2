"""Insights (progress_service.insights, GET /api/v1/insights, /insights/) on a seeded history.

The history is written to the real PostgreSQL (a schema of the test's own) with the mirror's
own upsert (tests/insights_history.py); the expected numbers are worked out here from the
seeded step times, with durations.py's percentile, so a change in the SQL, the history
filter or the bucketing shows.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from helpers import CLOSED_DATABASE_URL
from insights_history import FinishedJob, iso, seed
from test_api import Tags, build, csp_of

from progress_service import insights as core
from progress_service.durations import percentile, step_durations
from progress_service.errors import InvalidInput
from progress_service.mirror import Mirror

STEPS = ["fetch", "render", "upload"]


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def now() -> datetime:
    # mid-hour, so that "2 h ago" and "1 h ago" never straddle an hour's edge
    return hour_of(datetime.now(UTC)) + timedelta(minutes=30)


@pytest.fixture
def history(now) -> list[FinishedJob]:
    """Two pipelines over the last three hours, and one job a week ago."""
    two_ago, one_ago = now - timedelta(hours=2), now - timedelta(hours=1)
    jobs = [
        FinishedJob("v-1", two_ago, {"fetch": 1, "render": 10, "upload": 2}, steps=STEPS),
        FinishedJob("v-2", two_ago + timedelta(minutes=5), {"fetch": 3, "render": 30, "upload": 2}, steps=STEPS),
        FinishedJob("v-3", two_ago + timedelta(minutes=9), {"fetch": 2, "render": 20}, steps=STEPS,
                    status="failed", error="ffmpeg exited with 1"),
        FinishedJob("v-4", one_ago, {"fetch": 2, "render": 40, "upload": 4}, steps=STEPS),
        FinishedJob("v-5", one_ago + timedelta(minutes=1), {"fetch": 5}, steps=STEPS,
                    status="failed", error="ffmpeg exited with 1"),
        FinishedJob("v-6", one_ago + timedelta(minutes=2), {"fetch": 1, "render": 90}, steps=STEPS,
                    status="failed", error="the archive refused the request (HTTP 503)"),
        FinishedJob("v-7", one_ago + timedelta(minutes=3), {"fetch": 1}, steps=STEPS, status="canceled"),
        FinishedJob("t-1", one_ago, {"a": 0.5, "b": 0.25}, pipeline="tracked"),
        FinishedJob("v-old", now - timedelta(days=6), {"fetch": 9, "render": 99, "upload": 9}, steps=STEPS),
    ]
    return jobs


@pytest.fixture
def pg_app(settings, real_redis, db_url, history):
    seed(db_url, history)
    app = build(dataclasses.replace(settings, database_url=db_url))
    yield app
    app.extensions["progress_events"].close()


@pytest.fixture
def client(pg_app):
    return pg_app.test_client()


def by_pipeline(answer: dict) -> dict[str, dict]:
    return {p["pipeline"]: p for p in answer["pipelines"]}


def point_at(points: list[dict], at: datetime) -> dict:
    return next(p for p in points if p["at"] == iso(at))


def test_the_api_reports_counts_rates_durations_failures_and_the_slowest(client, history, now):
    r = client.get("/api/v1/insights?since=24h")  # the test client checks it against the OpenAPI schema
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    assert answer["bucket"] == "hour" and answer["pipeline"] is None
    assert answer["available"] == ["video", "tracked"]  # busiest first
    assert answer["sample"] == {"jobs": 8, "max_jobs": core.MAX_JOBS, "truncated": False}
    video = by_pipeline(answer)["video"]
    # v-old (6 days ago) is outside the window
    assert (video["finished"], video["completed"], video["failed"], video["canceled"]) == (7, 3, 3, 1)
    assert video["success_rate"] == 0.5  # a canceled job is no failure

    two_ago, one_ago = hour_of(now - timedelta(hours=2)), hour_of(now - timedelta(hours=1))
    assert len(video["throughput"]) == 25  # every hour of the window, the empty ones too
    assert point_at(video["throughput"], two_ago) == {
        "at": iso(two_ago), "completed": 2, "failed": 1, "canceled": 0, "success_rate": round(2 / 3, 4)}
    assert point_at(video["throughput"], one_ago) == {
        "at": iso(one_ago), "completed": 1, "failed": 2, "canceled": 1, "success_rate": round(1 / 3, 4)}
    assert point_at(video["throughput"], hour_of(now))["success_rate"] is None

    # step durations: only the steps a job finished (none for the step a job failed or was canceled in)
    assert video["steps"] == STEPS
    steps = {s["step"]: s["points"] for s in video["step_durations"]}
    assert point_at(steps["render"], two_ago) == {"at": iso(two_ago), "jobs": 2, "p50": 20, "p90": 28}  # 10, 30
    assert point_at(steps["fetch"], two_ago) == {"at": iso(two_ago), "jobs": 3, "p50": 2, "p90": 2.8}  # 1, 3, 2
    assert point_at(steps["fetch"], one_ago) == {"at": iso(one_ago), "jobs": 2, "p50": 1.5, "p90": 1.9}  # 2, 1
    assert point_at(steps["upload"], one_ago) == {"at": iso(one_ago), "jobs": 1, "p50": 4, "p90": 4}
    # job durations: started to finished, of every finished job that started
    assert point_at(video["job_durations"], two_ago) == {"at": iso(two_ago), "jobs": 3, "p50": 22, "p90": 32.4}
    assert point_at(video["job_durations"], one_ago) == {  # 46, 5, 91, 1
        "at": iso(one_ago), "jobs": 4, "p50": 25.5, "p90": round(percentile([46, 5, 91, 1], 90), 3)}

    assert video["failures"][0]["message"] == "ffmpeg exited with 1" and video["failures"][0]["count"] == 2
    assert video["failures"][0]["last_job_id"] == "v-5"
    assert [f["count"] for f in video["failures"]] == [2, 1]
    assert [j["job_id"] for j in video["slowest"][:3]] == ["v-6", "v-4", "v-2"]
    assert video["slowest"][0]["duration_seconds"] == 91 and video["slowest"][0]["status"] == "failed"

    tracked = by_pipeline(answer)["tracked"]
    assert tracked["steps"] == ["a", "b"] and tracked["success_rate"] == 1


def test_the_history_postgres_cuts_down_gives_the_durations_of_the_whole_one(client, history, now):
    """The SQL keeps only a history's step and status changes: durations.py must read from it
    what it reads from the whole history."""
    expected: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job in history:
        if job.pipeline == "video" and job.finished_at > now - timedelta(days=1):
            _snapshot, whole = job.snapshot_and_history()
            assert len(whole) > 3 * len(job.step_seconds)  # progress entries within the steps, too
            for step, seconds in step_durations(whole, STEPS).items():
                expected[(step, iso(hour_of(job.finished_at)))].append(seconds)
    answer = client.get("/api/v1/insights?since=24h&pipeline=video").get_json()
    got = {(s["step"], p["at"]): p for s in answer["pipelines"][0]["step_durations"] for p in s["points"]
           if p["jobs"]}
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key] == {"at": key[1], "jobs": len(values), "p50": round(percentile(values, 50), 3),
                            "p90": round(percentile(values, 90), 3)}


def test_one_pipeline_over_a_week_is_drawn_per_day(client, now):
    answer = client.get("/api/v1/insights?pipeline=video&since=7d").get_json()
    assert answer["bucket"] == "day" and answer["pipeline"] == "video"
    assert answer["available"] == ["video", "tracked"]  # the page's pipeline menu
    (video,) = answer["pipelines"]
    assert video["finished"] == 8  # v-old too
    old_day = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert point_at(video["throughput"], old_day)["completed"] == 1
    assert point_at(video["job_durations"], old_day) == {"at": iso(old_day), "jobs": 1, "p50": 117, "p90": 117}


def test_a_pipeline_without_jobs_is_reported_empty(client):
    answer = client.get("/api/v1/insights?pipeline=nothing-here").get_json()
    (empty,) = answer["pipelines"]
    assert empty["finished"] == 0 and empty["success_rate"] is None and empty["slowest"] == []
    assert all(p["p50"] is None for p in empty["job_durations"])


def test_the_row_limit_bounds_the_durations_not_the_counts(pg_app, now):
    mirror = Mirror(pg_app.extensions["progress"], pg_app.extensions["progress"].settings.database_url)
    with mirror:
        answer = core.insights(mirror, since=now - timedelta(days=1), now=now, max_jobs=3)
    assert answer["sample"] == {"jobs": 3, "max_jobs": 3, "truncated": True}
    video = by_pipeline(answer)["video"]
    assert video["finished"] == 7  # the counts are SQL aggregates over the whole window
    assert sum(p["jobs"] for p in video["job_durations"]) == 3  # the newest three: v-7, v-6, v-5
    assert [j["job_id"] for j in video["slowest"]] == ["v-6", "v-5", "v-7"]


@pytest.mark.parametrize(("query", "names"), [
    ("since=yesterday", "since"),
    ("since=1000d", "90 days"),
    ("since=999999w", "90 days"),  # a span past what a date can hold, too
    ("since=0001-01-01T00:00:00%2B14:00", "90 days"),
    ("since=2w3d", "since"),
    ("since=2099-01-01T00:00:00Z", "past"),
    ("since=2026-11-30T00:00:00", "time zone"),
    ("pipeline=no%20spaces", "pipeline"),
    ("limit=5", "unknown query parameter 'limit'"),
])
def test_bad_parameters_are_a_400_naming_what_is_wrong(client, query, names):
    r = client.get(f"/api/v1/insights?{query}")
    assert r.status_code == 400
    assert r.get_json()["error"] == "invalid_input" and names in r.get_json()["detail"]
    page = client.get(f"/insights/?{query}")
    assert page.status_code == 400 and page.mimetype == "text/html"


def test_parse_since_takes_spans_and_times():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert core.parse_since(None, now) == now - timedelta(days=1)
    assert core.parse_since("90m", now) == now - timedelta(minutes=90)
    assert core.parse_since("2w", now) == now - timedelta(weeks=2)
    assert core.parse_since("2026-11-30T06:00:00+02:00", now) == datetime(2026, 11, 30, 4, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="90 days"):
        core.parse_since("91d", now)


def test_postgres_down_is_a_503_for_the_api_and_the_page(settings, real_redis):
    app = build(dataclasses.replace(settings, database_url=CLOSED_DATABASE_URL))
    client = app.test_client()
    r = client.get("/api/v1/insights")
    assert r.status_code == 503 and "postgres" in r.get_json()["detail"]
    assert r.headers["Retry-After"]
    page = client.get("/insights/")  # at once: the mirror's pool knows PostgreSQL is down
    assert page.status_code == 503 and b"A backend is down" in page.data
    app.extensions["progress_events"].close()


def test_the_page_serves_its_charts_from_our_own_files_under_the_csp(client):
    r = client.get("/insights/?since=24h")
    assert r.status_code == 200 and r.mimetype == "text/html"
    tags = Tags(r.get_data(as_text=True)).tags
    scripts = [a.get("src") for t, a in tags if t == "script" and a.get("type") != "application/json"]
    assert scripts == ["/static/vendor/chart.umd.js", "/static/insights.js"]  # no inline script, no CDN
    canvases = [a for t, a in tags if t == "canvas"]
    assert len(canvases) == 2 * 4  # video and tracked, four charts each
    assert csp_of(r)["script-src"] == ["'self'"]
    vendored = client.get("/static/vendor/chart.umd.js")
    assert vendored.status_code == 200 and b"Chart.js v4" in vendored.data[:200]
    vendored.close()


def test_every_page_links_to_the_insights(client):
    tags = Tags(client.get("/").get_data(as_text=True)).tags
    assert ("a", {"href": "/insights/"}) in tags
