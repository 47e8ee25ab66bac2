"""``PROGRESS_READ_AUTH=token``: every read needs the API token or a read token of its job or batch.

Through Flask's test client on the real Redis (each test under a key prefix of its own).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli_env

from progress_cli import exit_codes
from progress_service.config import ConfigError, Settings
from progress_service.errors import Unauthorized
from web import auth, create_app, read_tokens

ROOT = Path(__file__).resolve().parent.parent
SECRET = "read-token-secret"
API_TOKEN = "the-api-token"
# GET routes that stay open under PROGRESS_READ_AUTH=token: health and metrics (README, "HTTP API and events"), the
# OpenAPI document (it describes the endpoints, no job's data) and static files.
OPEN_ROUTES = frozenset({"static", "ops.healthz", "ops.metrics_text", "openapi.openapi_json"})


def token_settings(settings: Settings, **changes) -> Settings:
    return dataclasses.replace(settings, **{"read_auth": "token", "secret_key": SECRET, "api_token": API_TOKEN,
                                            **changes})


@pytest.fixture
def app(settings, real_redis, db_url):
    app = create_app(token_settings(settings, database_url=db_url))
    app.config["TESTING"] = True
    yield app
    mirror = app.extensions.get("progress_mirror")
    if mirror is not None:
        mirror.close()
    app.extensions["progress_events"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def jobs(app):
    """Two jobs of two papers, finished (so that their event streams end), on the app's store."""
    store = app.extensions["progress"]
    for job_id, paper_id in (("job-a", "paper-a"), ("job-b", "paper-b")):
        store.create_job(job_id, paper_id, steps=["one"])
        store.update(job_id, status="completed")
    return store


def read_token(kind: str, scope_id: str, **kwargs) -> str:
    return read_tokens.mint(SECRET, kind, scope_id, **kwargs)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response) -> str:
    assert response.status_code == 401, (response.request.path, response.status_code)
    body = response.get_json()
    assert body["error"] == "unauthorized", body
    return body["detail"]


JOB_A_READS = [
    "/api/v1/jobs/job-a",
    "/api/v1/jobs/job-a/history",
    "/api/v1/jobs/job-a/events",
    "/status/paper-a/?_json=1",
    "/status/paper-a/",
]


# -- configuration ------------------------------------------------------------------------


def test_token_mode_without_a_secret_key_is_a_config_error_and_exit_78(settings):
    with pytest.raises(ConfigError, match="PROGRESS_SECRET_KEY"):
        Settings.from_env({"PROGRESS_READ_AUTH": "token"})
    with pytest.raises(ConfigError, match="PROGRESS_READ_AUTH"):
        Settings.from_env({"PROGRESS_READ_AUTH": "tokens", "PROGRESS_SECRET_KEY": "k"})
    assert Settings.from_env({}).read_auth == "open"
    assert "s3cr3t" not in repr(Settings.from_env({"PROGRESS_SECRET_KEY": "s3cr3t"}))  # e.g. in a log line
    env = cli_env(settings, PROGRESS_READ_AUTH="token")
    env.pop("PROGRESS_SECRET_KEY", None)
    done = subprocess.run([sys.executable, "-m", "progress_cli", "web", "--port", "1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_codes.CONFIG == 78, done.stderr
    assert "PROGRESS_SECRET_KEY" in done.stderr


def test_open_mode_reads_without_a_token_as_before(settings, real_redis):
    app = create_app(dataclasses.replace(settings, api_token=API_TOKEN))
    try:
        app.extensions["progress"].create_job("job-a", "paper-a", steps=["one"])
        client = app.test_client()
        assert client.get("/api/v1/jobs/job-a").status_code == 200
        assert client.get("/api/v1/jobs").status_code == 200
        assert client.get("/status/paper-a/").status_code == 200
    finally:
        app.extensions["progress_events"].close()


# -- scope ---------------------------------------------------------------------------------


def test_a_job_token_reads_its_job_by_header_or_query_and_nothing_else(client, jobs):
    token = read_token("job", "job-a")
    for url in JOB_A_READS:
        assert client.get(url, headers=bearer(token)).status_code == 200, url
        sep = "&" if "?" in url else "?"
        assert client.get(f"{url}{sep}token={token}").status_code == 200, url
        assert_unauthorized(client.get(url))
    for url in ["/api/v1/jobs/job-b", "/api/v1/jobs/job-b/history", "/api/v1/jobs/job-b/events",
                "/status/paper-b/?_json=1", "/status/paper-b/", "/api/v1/jobs/job-b/video"]:
        assert "for job job-a, not this" in assert_unauthorized(client.get(url, headers=bearer(token)))
    # a list is never a read token's, not even one that would hold only its job
    assert "API token" in assert_unauthorized(client.get("/api/v1/jobs?paper_id=paper-a", headers=bearer(token)))
    assert_unauthorized(client.get("/", headers=bearer(token)))
    for url in ("/api/v1/events", "/api/v1/overview", "/api/v1/events?tag=x"):  # the dashboard's: lists
        assert "API token" in assert_unauthorized(client.get(url, headers=bearer(token)))
        assert "API token" in assert_unauthorized(client.get(f"{url}{'&' if '?' in url else '?'}token={token}"))


def test_the_api_token_reads_everything_including_lists(client, jobs):
    for url in JOB_A_READS + ["/api/v1/jobs", "/", "/api/v1/jobs/job-b"]:
        assert client.get(url, headers=bearer(API_TOKEN)).status_code == 200, url
    assert client.get(f"/api/v1/jobs?token={API_TOKEN}").status_code == 200
    assert client.get("/api/v1/overview", headers=bearer(API_TOKEN)).status_code == 200
    stream = client.get(f"/api/v1/events?token={API_TOKEN}", buffered=False)  # EventSource: ?token=
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    chunks = iter(stream.response)
    assert next(chunks).startswith(b"retry: ") and next(chunks).startswith(b"event: overview\n")
    stream.close()


def test_the_status_page_follows_the_papers_latest_job(client, jobs):
    token = read_token("job", "job-a")
    assert client.get("/status/paper-a/", headers=bearer(token)).status_code == 200
    jobs.create_job("job-a2", "paper-a", steps=["one"])  # a newer job of the paper: its page shows that one
    assert_unauthorized(client.get("/status/paper-a/", headers=bearer(token)))
    assert_unauthorized(client.get("/status/paper-a/?_json=1", headers=bearer(token)))
    assert client.get("/api/v1/jobs/job-a", headers=bearer(token)).status_code == 200
    assert_unauthorized(client.get("/status/no-such-paper/", headers=bearer(token)))


def test_a_batch_token_reads_its_batch_and_its_members_and_nothing_else(client, jobs):
    """batch-1 holds job-m1 (paper-m1) and job-m2; job-a and job-b belong to no batch."""
    jobs.create_batch("batch-1", ["job-m1", "job-m2"], "video")
    jobs.create_batch("batch-2", ["job-n1"], "video")
    for job_id, paper_id, batch_id in (("job-m1", "paper-m1", "batch-1"), ("job-m2", "paper-m2", "batch-1"),
                                       ("job-n1", "paper-n1", "batch-2")):
        jobs.create_job(job_id, paper_id, steps=["one"], batch_id=batch_id)
        jobs.update(job_id, status="completed")
    token = read_token("batch", "batch-1")
    for url in ["/api/v1/batches/batch-1", "/api/v1/batches/batch-1/events", "/batches/batch-1/",
                "/api/v1/jobs/job-m1", "/api/v1/jobs/job-m2/history", "/api/v1/jobs/job-m1/events",
                "/status/paper-m1/", "/status/paper-m2/?_json=1"]:
        assert client.get(url, headers=bearer(token)).status_code == 200, url
        assert_unauthorized(client.get(url))
    for url in ["/api/v1/batches/batch-2", "/api/v1/batches/batch-2/events", "/batches/batch-2/",
                "/api/v1/jobs/job-n1", "/api/v1/jobs/job-a", "/status/paper-n1/", "/status/paper-a/",
                "/api/v1/jobs/no-such-job"]:
        assert "for batch batch-1, not this" in assert_unauthorized(client.get(url, headers=bearer(token)))
    assert_unauthorized(client.get("/api/v1/jobs?batch_id=batch-1", headers=bearer(token)))  # never a list
    # a member's token reads its job, not its batch nor the other members
    member = read_token("job", "job-m1")
    assert client.get("/api/v1/jobs/job-m1", headers=bearer(member)).status_code == 200
    for url in ["/api/v1/batches/batch-1", "/api/v1/jobs/job-m2", "/batches/batch-1/"]:
        assert_unauthorized(client.get(url, headers=bearer(member)))
    page = client.get(f"/batches/batch-1/?token={token}").get_data(as_text=True)
    assert json.loads(page.split('id="page-config">', 1)[1].split("</script>", 1)[0])["token"] == token


def test_scope_check_covers_batch_routes():
    scope = read_tokens.ReadScope("batch", "batch-1", int(time.time()) + 60)
    assert auth.allows(scope, auth.BATCH, {"batch_id": "batch-1"})
    assert not auth.allows(scope, auth.BATCH, {"batch_id": "batch-2"})
    job_scope = read_tokens.ReadScope("job", "batch-1", int(time.time()) + 60)
    assert not auth.allows(job_scope, auth.BATCH, {"batch_id": "batch-1"})


# -- expiry and tampering --------------------------------------------------------------------


def test_a_token_expires_at_its_own_ttl():
    now = 1_800_000_000.0
    token, scope = read_tokens.mint(SECRET, "job", "job-a", ttl=60, now=now)
    assert scope.expires_at == "2027-01-15T08:01:00.000Z"
    assert read_tokens.verify(SECRET, token, now=now + 59.9) == scope
    with pytest.raises(Unauthorized, match="expired at 2027-01-15T08:01:00.000Z"):
        read_tokens.verify(SECRET, token, now=now + 60)


def test_an_expired_token_is_a_401(client, jobs):
    expired = read_token("job", "job-a", ttl=60, now=time.time() - 61)
    assert "expired" in assert_unauthorized(client.get("/api/v1/jobs/job-a", headers=bearer(expired)))
    assert "expired" in assert_unauthorized(client.get(f"/api/v1/jobs/job-a/events?token={expired}"))


def resigned_payload(token: str, payload: dict) -> str:
    """``token`` with its payload replaced and its signature kept (what a forger can do)."""
    _, signature = token.rsplit(".", 1)
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{body.decode()}.{signature}"


def test_a_changed_or_foreign_token_is_a_401(client, jobs):
    token = read_token("job", "job-a", ttl=60)
    forged = [
        resigned_payload(token, {"job_id": "job-b", "exp": int(time.time()) + 60}),  # another job
        resigned_payload(token, {"job_id": "job-a", "exp": int(time.time()) + 10**6}),  # a longer life
        read_tokens.mint("another-key", "job", "job-a")[0],  # a wrong key
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # a changed signature
        "job-a",
        API_TOKEN + "x",
    ]
    for bad in forged:
        for url in ("/api/v1/jobs/job-a", "/api/v1/jobs/job-b"):
            assert_unauthorized(client.get(url, headers=bearer(bad)))
    assert client.get("/api/v1/jobs/job-a", headers=bearer(token)).status_code == 200


# -- never a write ---------------------------------------------------------------------------


def test_a_read_token_never_writes(client, jobs):
    token = read_token("job", "job-a")
    writes = [
        ("/api/v1/jobs/job-a/cancel", None),
        ("/api/v1/jobs", {"paper_id": "paper-a"}),
        ("/api/v1/tokens", {"job_id": "job-a"}),
    ]
    for url, body in writes:
        assert_unauthorized(client.post(url, json=body, headers=bearer(token)))
        assert_unauthorized(client.post(f"{url}?token={token}", json=body))
        assert_unauthorized(client.post(f"{url}?token={API_TOKEN}", json=body))  # writes take the header alone
    assert jobs.get("job-a")["status"] == "completed"


# -- minting ---------------------------------------------------------------------------------


def test_post_tokens_mints_a_scoped_token_with_the_api_token(client, jobs):
    before = time.time()
    r = client.post("/api/v1/tokens", json={"job_id": "job-a", "ttl": 120}, headers=bearer(API_TOKEN))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert set(body) == {"read_token", "expires_at"}
    scope = read_tokens.verify(SECRET, body["read_token"])
    assert (scope.kind, scope.id) == ("job", "job-a") and body["expires_at"] == scope.expires_at
    assert before + 119 <= scope.expires <= time.time() + 121
    assert client.get("/api/v1/jobs/job-a", headers=bearer(body["read_token"])).status_code == 200
    batch = client.post("/api/v1/tokens", json={"batch_id": "batch-1"}, headers=bearer(API_TOKEN)).get_json()
    assert read_tokens.verify(SECRET, batch["read_token"]).describe() == "batch batch-1"
    assert_unauthorized(client.post("/api/v1/tokens", json={"job_id": "job-a"}))
    assert client.post("/api/v1/tokens", json={"job_id": "nope"}, headers=bearer(API_TOKEN)).status_code == 404
    for bad in [{}, {"job_id": "job-a", "batch_id": "b"}, {"job_id": "job-a", "ttl": 0},
                {"job_id": "job-a", "ttl": "60"}, {"job_id": "bad id"}, {"job_id": "job-a", "scope": "x"}]:
        r = client.post("/api/v1/tokens", json=bad, headers=bearer(API_TOKEN))
        assert r.status_code == 400, (bad, r.get_json())


def test_with_no_api_token_nobody_mints_but_a_submit_answer_still_carries_one(settings, real_redis):
    app = create_app(token_settings(settings, api_token=None))
    try:
        client = app.test_client()
        app.extensions["progress"].create_job("job-a", "paper-a", steps=["one"])
        assert "PROGRESS_API_TOKEN is not set" in assert_unauthorized(
            client.post("/api/v1/tokens", json={"job_id": "job-a"}))
        assert "API token" in assert_unauthorized(client.get("/api/v1/jobs", headers=bearer(read_token("job", "job-a"))))
        assert client.get("/api/v1/jobs/job-a", headers=bearer(read_token("job", "job-a"))).status_code == 200
        assert client.get("/rq/").status_code == 401  # it lists every job: closed with no API token to open it
    finally:
        app.extensions["progress_events"].close()


def test_a_status_page_passes_its_token_on_to_its_scripts(client, jobs):
    token = read_token("job", "job-a")
    page = client.get(f"/status/paper-a/?token={token}").get_data(as_text=True)
    config = json.loads(page.split('id="page-config">', 1)[1].split("</script>", 1)[0])
    assert config["token"] == token


# -- every reading route ---------------------------------------------------------------------


def url_of(rule) -> str:
    """A URL that matches ``rule``, with a made-up value for each argument."""
    values = {}
    for name, converter in rule._converters.items():
        values[name] = 0 if type(converter).__name__ in ("IntegerConverter", "NumberConverter") else "x1"
    return rule.build(values, append_unknown=False)[1]


def reading_rules(app):
    return [r for r in app.url_map.iter_rules() if "GET" in r.methods and r.endpoint not in OPEN_ROUTES]


def test_every_reading_route_needs_a_token(app, jobs):
    """Walks the app's routes: a GET route that is not on the short open list answers 401
    without a token and with another job's read token. A route added without declaring its
    read access is closed by default, so a new route fails here only if it is opened wrongly."""
    client = app.test_client()
    other = read_token("job", "job-b")
    rules = reading_rules(app)
    assert {"api.get_job", "api.list_jobs", "events.job_events", "api.job_video", "pages.status_page",
            "pages.index", "rq_dashboard.queues_overview", "batches.get_batch", "batches.batch_events",
            "batches.batch_page", "live.all_events", "live.get_overview"} <= {r.endpoint for r in rules}
    for rule in rules:
        url = url_of(rule)
        for headers in ({}, bearer(other)):
            r = client.get(url, headers=headers, follow_redirects=True)
            assert r.status_code == 401, (rule.rule, r.status_code, r.get_data(as_text=True)[:200])
    for endpoint in OPEN_ROUTES & {r.endpoint for r in app.url_map.iter_rules()} - {"static"}:
        rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
        assert client.get(url_of(rule)).status_code in (200, 503), rule.rule


def test_a_new_route_that_declares_nothing_is_closed(settings, real_redis):
    app = create_app(token_settings(settings))
    try:
        app.add_url_rule("/api/v1/jobs/<job_id>/secret", "secret", lambda job_id: {"job_id": job_id})
        client = app.test_client()
        assert_unauthorized(client.get("/api/v1/jobs/job-a/secret", headers=bearer(read_token("job", "job-a"))))
        assert client.get("/api/v1/jobs/job-a/secret", headers=bearer(API_TOKEN)).status_code == 200
    finally:
        app.extensions["progress_events"].close()


# -- logs --------------------------------------------------------------------------------------


def test_gunicorn_logs_show_no_token():
    from gunicorn.config import Config

    from web import gunicorn_conf

    cfg = Config()
    cfg.set("accesslog", "-")
    logger = gunicorn_conf.RedactingLogger(cfg)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/v1/jobs/j/events?token=SECRET1&last_event_id=3",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/api/v1/jobs/j/events",
               "QUERY_STRING": "token=SECRET1&last_event_id=3", "HTTP_REFERER": "http://h/status/p/?token=SECRET2",
               "HTTP_AUTHORIZATION": "Bearer SECRET3"}

    class Response:
        status = "200 OK"
        headers = ()
        sent = 0

    class Request:
        headers = [("REFERER", "http://h/status/p/?x=1&token=SECRET2"), ("AUTHORIZATION", "Bearer SECRET3")]

    atoms = logger.atoms(Response(), Request(), environ, dataclasses.make_dataclass(
        "Took", [("seconds", int, 0), ("microseconds", int, 0)])())
    text = json.dumps(atoms, default=str)
    assert "SECRET" not in text, text
    assert atoms["r"] == "GET /api/v1/jobs/j/events?token=***&last_event_id=3 HTTP/1.1"
    assert atoms["f"] == "http://h/status/p/?token=***"
    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "Error handling request %s",
                               ("/status/p/?token=SECRET4",), None)
    gunicorn_conf.redact_record(record)
    assert record.getMessage() == "Error handling request /status/p/?token=***"
