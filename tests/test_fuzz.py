"""Fuzzing every HTTP endpoint (hypothesis): never a 5xx, errors in the documented JSON shape,
and no Redis key outside the test's prefix afterwards.

The endpoints come from the app's ``url_map``, so a new route is fuzzed without a change
here. Each example is one request: a route and method, its path segments (ids, junk,
non-UTF-8 bytes, trailing newlines), a query string (``last_event_id``, ``status``,
``limit``, ``paper_id``, ``_json`` ...), the headers ``Last-Event-ID``, ``Authorization``
and ``Content-Type``, and for a POST a body (JSON objects with the API's field names,
other JSON, deep nesting, raw bytes).

The app runs as in production, with an API token, on a real Redis and a real
PostgreSQL (a schema of the test's own). The Redis is a private, embedded one: the POST
routes write (they queue real RQ jobs, cancel jobs), and only a server nobody else uses
lets the test check afterwards that no key at all is left outside its prefix once it
has deleted the RQ jobs it queued. rq-dashboard's routes (``/rq/``, a library's) are
asked without the token: they are fuzzed as far as the guard in front of them, which
must answer 401, and never reach RQ's data.

Bounded: ``MAX_EXAMPLES`` requests, derandomized (the same ones on every run), in well
under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse

import pytest
import redis
from helpers import embedded_redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from progress_service.models import DEFAULT_STEPS
from web import create_app

MAX_EXAMPLES = 1500
TOKEN = "fuzz-token"
STEPS = list(DEFAULT_STEPS)
KNOWN_IDS = ["job-run", "job-done", "job-new", "31452104", "no-such-job"]
QUERY_NAMES = ["last_event_id", "status", "limit", "paper_id", "_json", "tag", "batch_id", "token",
               "pipeline", "since"]
BODY_FIELDS = ["paper_id", "pipeline", "tags", "retries", "enqueue", "steps", "name", "paper_ids",
               "job_id", "batch_id", "ttl", "progress_percent", "status", "result", "force"]
ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
JSON_MIMETYPES = {"application/json"}


def routes(app) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every route, HEAD and OPTIONS aside."""
    return sorted(
        (method, rule.rule, rule.endpoint)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


# -- strategies ---------------------------------------------------------------------------

printable = st.characters(blacklist_categories=("Cs",))  # any code point UTF-8 can encode
header_chars = st.characters(min_codepoint=0x20, max_codepoint=0xFF)  # what WSGI carries (latin-1)

def mostly(likely, other, percent: int = 60):
    """``likely`` in about ``percent`` % of the draws, else ``other`` (the valid case is
    the one that reaches the code behind the checks)."""
    return st.integers(0, 99).flatmap(lambda i: likely if i < percent else other)


segment = mostly(st.sampled_from(KNOWN_IDS), st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True),
    st.sampled_from(["abc\n", "job-run\n", "x" * 65, "..", ".", "%", "²", "a b", "a/b"]),
    st.text(printable, max_size=40),
)).map(lambda s: urllib.parse.quote(s, safe=""))
raw_segment = st.binary(min_size=1, max_size=12).map(lambda b: urllib.parse.quote(b, safe=""))

query_value = st.one_of(
    st.sampled_from(["", "1", "0", "-1", "999999999999999999999", "9" * 5000, "²", "running",
                     "completed", "bogus", "job-run", "abc\n", "1e3", "NaN", "24h", "7d", "999999w",
                     "2026-11-30T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(printable, max_size=30),
)
query = st.lists(
    st.tuples(mostly(st.sampled_from(QUERY_NAMES), st.text(printable, max_size=10), percent=85),
              query_value),
    max_size=3,
).map(lambda pairs: urllib.parse.urlencode(pairs))

last_event_id = mostly(st.none(), st.one_of(
    st.integers(min_value=0, max_value=10).map(str),
    st.sampled_from(["9" * 5000, "\xb2", "-1", " 3 ", "1.5", "9" * 17, "0x10"]),
    st.text(header_chars, max_size=20),
), percent=50)
authorization = mostly(st.just(f"Bearer {TOKEN}"), st.one_of(
    st.none(),
    st.sampled_from(["Bearer wrong", "Bearer", "Basic Zm9vOmJhcg==", "Basic !!!", "bearer " + TOKEN]),
    st.text(header_chars, max_size=30),
))
content_type = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1",
                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "application/json; charset=utf-16"]),
    st.text(header_chars, max_size=30),
)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                      st.floats(), st.text(printable, max_size=20),
                      st.sampled_from(KNOWN_IDS + ["video", "no-such-pipeline", "abc\n"]))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(printable, max_size=8), inner, max_size=4)),
    max_leaves=12,
)
body = mostly(st.one_of(
    st.none(),
    st.fixed_dictionaries({"paper_id": st.sampled_from(["31452104", "abc", "abc\n", "x" * 65])},
                          optional={"pipeline": st.sampled_from(["video", "nope", ""])}).map(json.dumps),
), st.one_of(
    st.dictionaries(st.sampled_from(BODY_FIELDS), json_value, max_size=4).map(json.dumps),
    json_value.map(json.dumps),
    st.sampled_from(["[" * 15000, '{"a":' * 3000, "{", "", "null", "\ufeff{}"]),
    st.binary(max_size=64),
), percent=40)


@st.composite
def fuzzed_request(draw, table):
    ours = [r for r in table if not r[2].startswith("rq_dashboard.")]
    dashboard = [r for r in table if r[2].startswith("rq_dashboard.")]
    # rq-dashboard has more routes than the app: ask each of ours three times as often
    pool = dashboard if dashboard and draw(st.integers(0, 3)) == 3 else ours
    method, rule, endpoint = draw(st.sampled_from(pool))
    path = ARGUMENT.sub(lambda _m: draw(st.one_of(segment, raw_segment)), rule)
    qs = draw(query)
    headers = {}
    for name, strategy in (("Last-Event-ID", last_event_id), ("Authorization", authorization),
                           ("Content-Type", content_type)):
        value = draw(strategy)
        if value is not None:
            headers[name] = value
    if endpoint.startswith("rq_dashboard."):
        headers.pop("Authorization", None)  # only ever the guard: the dashboard writes to RQ
    data = draw(body) if method == "POST" else None
    return method, path, qs, headers, data


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def private_redis_url(redis_server_bin):
    """A Redis of this test's own: every key it holds afterwards is one the test made."""
    with embedded_redis(redis_server_bin, "the fuzz test wants a Redis of its own") as url:
        yield url


@pytest.fixture
def fuzz_app(settings, private_redis_url, db_url):
    app = create_app(dataclasses.replace(
        settings, redis_url=private_redis_url, progress_redis_url=private_redis_url,
        database_url=db_url, api_token=TOKEN))
    app.config["TESTING"] = True
    store = app.extensions["progress"]
    store.create_job("job-run", "31452104", steps=STEPS)
    store.update("job-run", status="running", current_step="generate-audio", progress_percent=40)
    store.create_job("job-done", "31452104", steps=STEPS)
    store.update("job-done", status="running", progress_percent=10)
    store.update("job-done", progress_percent=100, result={"video_path": "/nonexistent/v.mp4"})
    store.create_job("job-new", "abc", steps=STEPS)
    yield app
    app.extensions["progress_events"].close()
    mirror = app.extensions.get("progress_mirror")
    if mirror is not None:
        mirror.close()


def delete_rq_jobs(conn: redis.Redis, queue_name: str, job_ids: set[str]) -> None:
    """The RQ jobs the test queued, and its queue off RQ's list (as tests/test_api.py does)."""
    from rq.job import Job

    for job_id in job_ids:
        try:
            Job.fetch(job_id, connection=conn).delete()
        except Exception:  # noqa: BLE001 - never queued (refused before RQ), or gone already
            pass
    conn.srem("rq:queues", f"rq:queue:{queue_name}")


# -- the test -------------------------------------------------------------------------------


def test_no_endpoint_answers_5xx_or_an_error_that_is_not_json(fuzz_app, private_redis_url,
                                                              settings):
    table = routes(fuzz_app)
    assert {rule for _m, rule, _e in table} >= {"/api/v1/jobs", "/api/v1/jobs/<job_id>/events",
                                               "/status/<paper_id>/", "/healthz"}
    client = fuzz_app.test_client()
    queued: set[str] = set()
    seen: dict[str, int] = {}

    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzzed_request(table))
    def one_request(request):
        method, path, qs, headers, data = request
        response = client.open(path, method=method, query_string=qs, headers=headers, data=data)
        try:
            status = response.status_code
            what = f"{method} {path}?{qs} {headers} {data!r:.200} -> {status}"
            seen[path.split("/")[1]] = seen.get(path.split("/")[1], 0) + 1
            assert status < 500, what + f": {response.get_data()[:300]!r}"
            if path.startswith("/rq/"):
                # the guard; or routing's own answer before it: no such route, a redirect
                assert status in (401, 404) or 300 <= status < 400, what
                return
            if method == "POST" and (path == "/api/v1/jobs" or path.endswith("/retry")) and status == 202:
                queued.add(response.get_json()["job_id"])  # a submit, or a retry of a job it canceled
            pairs = urllib.parse.parse_qsl(qs, keep_blank_values=True)
            asked = next((v for k, v in pairs if k == "_json"), "")  # the first, as Flask reads it
            wants_json = (path.startswith("/api/") or path in ("/healthz", "/metrics")
                          or asked not in ("", "0"))
            if status >= 400 and wants_json:
                assert response.mimetype in JSON_MIMETYPES, what
                answer = response.get_json()
                assert isinstance(answer, dict) and set(answer) == {"error", "detail"}, what
                assert isinstance(answer["error"], str) and answer["error"], what
                assert isinstance(answer["detail"], str) and answer["detail"], what
        finally:
            response.close()  # an event stream lets go of its subscription

    conn = redis.Redis.from_url(private_redis_url)
    try:
        one_request()
    finally:
        delete_rq_jobs(conn, settings.queue_name, queued)
        prefix = settings.key_prefix + ":"
        stray = sorted(k.decode() for k in conn.scan_iter(count=1000)
                       if not k.decode().startswith(prefix))
        conn.close()
    assert stray == [], f"keys outside {prefix!r}: {stray[:20]}"
    assert seen.get("api", 0) > MAX_EXAMPLES // 3, seen  # the API got its share of requests
