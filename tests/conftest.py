"""One suite, two backends (the way fakeredis' own conftest does it).

``redis_client`` runs each test twice: on fakeredis (``[fake]``) and on a real
Redis (``[real]``). The real servers come from the environment, or are started
embedded once per session (progress_cli.embedded) when nothing answers:

- Redis: ``PROGRESS_TEST_REDIS_URL``, else ``REDIS_URL``, else redis://127.0.0.1:6379/0
- PostgreSQL: ``PROGRESS_TEST_DATABASE_URL``, else ``DATABASE_URL``, else
  postgresql://postgres@127.0.0.1:5432/postgres

A real server may be shared: nothing here flushes it. Tests are kept apart by
a key prefix of their own (``key_prefix``), and their keys deleted afterwards.

Tests that need a real backend are marked ``backend``. Where no backend can be
had they are skipped, except in strict mode (``PROGRESS_TEST_STRICT=1``, set by
CI), where such a skip is a failure.

The plain functions and classes the test modules share (``wait_until``, ``cli_env``,
``RestartableRedis`` ...) live in tests/helpers.py, imported as ``from helpers import
wait_until``; only fixtures and hooks live here.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
import uuid

import pytest
from helpers import (
    CLOSED_DATABASE_URL,
    CLOSED_REDIS_URL,
    STRICT,
    RestartableRedis,
    embedded_redis,
    unavailable,
)

ALLOW_NO_CLUSTER = os.environ.get("PROGRESS_TEST_ALLOW_NO_CLUSTER") == "1"

# A test that uses one of these fixtures talks to a real server.
BACKEND_FIXTURES = {"real_redis_url", "real_redis", "postgres_url", "pg_settings", "redis_cluster"}


def redis_answers(url: str) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def uses_fake_redis(node) -> bool:
    """Whether ``node`` is the ``[fake]`` run of a test parametrized by ``redis_client``."""
    callspec = getattr(node, "callspec", None)
    return callspec is not None and callspec.params.get("redis_client") == "fake"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        real_settings = "settings" in names and not uses_fake_redis(item)
        if real_settings or BACKEND_FIXTURES & names:
            item.add_marker(pytest.mark.backend)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    skipped = report.skipped and not hasattr(report, "wasxfail")
    if STRICT and skipped and item.get_closest_marker("backend"):
        if not (ALLOW_NO_CLUSTER and "redis_cluster" in getattr(item, "fixturenames", ())):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.outcome = "failed"
            report.longrepr = f"PROGRESS_TEST_STRICT=1: a backend test may not be skipped: {reason}"
    return report


@pytest.fixture(scope="session")
def redis_server_bin() -> str | None:
    from progress_cli.embedded import redis_server_binary

    return redis_server_binary()


def configured_url(name: str, default: str) -> str:
    """``PROGRESS_TEST_<name>``, else ``<name>``, else ``default``."""
    return os.environ.get(f"PROGRESS_TEST_{name}") or os.environ.get(name) or default


@pytest.fixture(scope="session")
def real_redis_url(redis_server_bin):
    url = configured_url("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    with embedded_redis(redis_server_bin, f"no Redis answers at {url}") as started:
        yield started


@pytest.fixture
def restartable_redis(redis_server_bin):
    """A ``RestartableRedis`` without persistence: it comes back empty."""
    if redis_server_bin is None:
        unavailable("no redis-server binary to start a throwaway Redis")
    server = RestartableRedis(redis_server_bin)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url():
    url = configured_url("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if postgres_answers(url):
        yield url
        return
    from progress_cli.embedded import EmbeddedPostgres, EmbeddedServerError

    try:
        server = EmbeddedPostgres()
    except EmbeddedServerError as exc:
        unavailable(f"no PostgreSQL answers at {url}, and an embedded one failed: {exc}")
    with server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster(redis_server_bin):
    """A Redis Cluster of three masters on loopback, for the whole session."""
    if redis_server_bin is None:
        reason = "no redis-server binary to start a Redis Cluster"
        if ALLOW_NO_CLUSTER:
            pytest.skip(f"{reason} (PROGRESS_TEST_ALLOW_NO_CLUSTER=1)")
        unavailable(reason)
    from redis_cluster import EmbeddedRedisCluster

    with EmbeddedRedisCluster(3, binary=redis_server_bin) as cluster:
        yield cluster


@pytest.fixture
def cluster_store(redis_cluster, key_prefix):
    """A ProgressStore on the session's Redis Cluster, under this test's own prefix."""
    from progress_service import ProgressStore, Settings
    from progress_service.store import connect

    settings = Settings.from_env({
        "PROGRESS_REDIS_URL": redis_cluster.url,
        "PROGRESS_REDIS_CLUSTER": "1",
        "PROGRESS_KEY_PREFIX": key_prefix,
    })
    client = connect(settings)
    yield ProgressStore(client, settings)
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test's own: the real server is shared, never flushed."""
    return f"t{uuid.uuid4().hex[:10]}"


def _delete_keys(client, key_prefix: str) -> None:
    """Every key naming ``key_prefix``, and RQ's keys of the jobs queued on this test's
    queues (``<prefix>-...``): those are named by job id alone, so they are found by their
    ``origin``; workers of those queues that died without deregistering; and the queues'
    entries in ``rq:queues``. (RQ's own ``rq:clean_groups`` lock is not a test's: it
    expires by itself.)"""
    for key in client.scan_iter(match=f"*{key_prefix}*", count=1000):
        client.unlink(key)
    prefix = key_prefix.encode()
    for key in client.scan_iter(match="rq:job:*", count=1000, _type="hash"):
        if (client.hget(key, "origin") or b"").startswith(prefix):
            job_id = key.split(b":")[2]
            client.unlink(key, b"rq:results:" + job_id, key + b":dependents", key + b":dependencies")
    for key in client.scan_iter(match="rq:worker:*", count=1000, _type="hash"):
        if (client.hget(key, "queues") or b"").startswith(prefix):  # a worker killed mid-test
            client.unlink(key, key + b":executions")
            client.srem("rq:workers", key)
    stale = [q for q in client.smembers("rq:queues") if prefix in q]
    if stale:
        client.srem("rq:queues", *stale)


@pytest.fixture(scope="module")
def module_key_prefix(real_redis_url) -> str:
    """A prefix shared by one module's tests (for a server they share); its keys go after."""
    import redis

    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(real_redis_url)
    _delete_keys(client, prefix)
    client.close()


@pytest.fixture
def real_redis(real_redis_url, key_prefix):
    """A client of the real Redis; the test's keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(real_redis_url)
    yield client
    _delete_keys(client, key_prefix)
    client.close()


@pytest.fixture(
    params=[
        pytest.param("fake", id="fake"),
        pytest.param("real", id="real", marks=pytest.mark.backend),
    ]
)
def redis_client(request, key_prefix):
    """fakeredis (a fresh server per test) or the real Redis."""
    if request.param == "fake":
        import fakeredis

        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        yield client
        client.close()
    else:
        yield request.getfixturevalue("real_redis")


@pytest.fixture
def settings(request, key_prefix):
    """Settings for this test: its own key prefix and queue, short intervals.

    ``redis_url`` is the real server's, except in ``[fake]`` runs: there it is a
    closed port, and no server is started. ``database_url`` is the real
    PostgreSQL only where the test asks for ``postgres_url`` or ``pg_settings``;
    else a closed port too, so that no test reaches a database by accident.
    """
    from progress_service.config import Settings

    wants_postgres = {"postgres_url", "pg_settings"}.intersection(request.fixturenames)
    env = {
        "REDIS_URL": (
            CLOSED_REDIS_URL
            if uses_fake_redis(request.node)
            else request.getfixturevalue("real_redis_url")
        ),
        "DATABASE_URL": (
            request.getfixturevalue("postgres_url") if wants_postgres else CLOSED_DATABASE_URL
        ),
        "PROGRESS_KEY_PREFIX": key_prefix,
        "PROGRESS_MIN_INTERVAL": "0.05",
        "PROGRESS_STALE_AFTER": "2",
        "PROGRESS_PENDING_STALE_AFTER": "3",
        "PROGRESS_WORKER_LOST_AFTER": "3",
        "PROGRESS_QUEUE": f"{key_prefix}-pipelines",
    }
    return Settings.from_env(env)


@pytest.fixture
def pg_settings(settings, postgres_url):
    """``settings`` with ``database_url`` pointing at the real PostgreSQL."""
    return dataclasses.replace(settings, database_url=postgres_url)


@pytest.fixture
def store(redis_client, settings):
    from progress_service.store import ProgressStore

    return ProgressStore(redis_client, settings)


@pytest.fixture
def connected_store(real_redis, settings):
    """A store on the real Redis through a client like production's (``store.connect``:
    decoded replies); closed afterwards. Modules whose every test runs on the real Redis
    make it their ``store``."""
    from progress_service.store import ProgressStore, connect

    store = ProgressStore(connect(settings), settings)
    yield store
    store.client.close()


@pytest.fixture
def rq_conn(real_redis_url, real_redis, settings):
    """A client of the real Redis for RQ (raw replies, as RQ wants); this test's queue is
    taken off RQ's list of queues afterwards."""
    import redis

    conn = redis.Redis.from_url(real_redis_url)
    yield conn
    conn.srem("rq:queues", f"rq:queue:{settings.queue_name}")
    conn.close()


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-c search_path=<schema>``: the tables go into that schema."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-c search_path={schema}"))
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


@pytest.fixture
def empty_db_url(postgres_url):
    """A URL of the real PostgreSQL whose tables land in a fresh schema of this test's own
    (not yet upgraded); the schema is dropped afterwards: the server is shared."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield with_search_path(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def db_url(empty_db_url):
    """``empty_db_url`` upgraded: ``progress_jobs`` is there, in the test's own schema."""
    from progress_service import migrations

    migrations.upgrade(empty_db_url)
    return empty_db_url
