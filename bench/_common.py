"""What the bench scripts share: their argument parser, the Redis they measure, the keys they
leave behind, and the verdict line. Each script runs as ``python bench/x.py``, so this folder
is on ``sys.path`` and ``import _common`` finds this file."""

from __future__ import annotations

import argparse
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from progress_service import ProgressStore, Settings


def arguments(doc: str | None, seconds: float | None = None) -> argparse.ArgumentParser:
    """A parser whose --help shows the script's docstring as written; with ``seconds``, it has
    ``--seconds`` (the time per measurement) with that default."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if seconds is not None:
        parser.add_argument("--seconds", type=float, default=seconds, help="time per measurement")
    return parser


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def key_prefix() -> str:
    """A fresh key prefix, so a bench never touches another's keys."""
    return f"bench-{uuid.uuid4().hex[:8]}"


def redis_store(**client_options) -> tuple[str, str, redis.Redis, ProgressStore]:
    """The Redis URL, a fresh key prefix, a client of that Redis, and a ProgressStore over it
    under that prefix."""
    url, prefix = redis_url(), key_prefix()
    settings = Settings.from_env({"REDIS_URL": url, "PROGRESS_KEY_PREFIX": prefix})
    client = redis.Redis.from_url(url, **client_options)
    return url, prefix, client, ProgressStore(client, settings)


def drop_keys(client, pattern: str) -> None:
    """Unlink every key matching ``pattern`` (the bench's prefix and a ``*``)."""
    for key in client.scan_iter(match=pattern, count=1000):
        client.unlink(key)


def verdict(label: str, met: bool, ok: str, missed: str) -> int:
    """Print ``label: ok`` or ``label: missed``; the script's exit status (0 met, 1 missed)."""
    print(f"{label}: {ok if met else missed}")
    return 0 if met else 1


def database_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-c search_path=<schema>``: the tables go into that schema."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("options", f"-c search_path={schema}")]
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL of the PostgreSQL at DATABASE_URL whose tables go into a fresh schema of the
    bench's own, upgraded (``progress_service.migrations``); the schema is dropped afterwards."""
    import psycopg

    from progress_service import migrations

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = with_search_path(database_url(), schema)
            migrations.upgrade(url)
            yield url
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
