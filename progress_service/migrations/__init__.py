"""Versioned PostgreSQL migrations, applied by ``progress-service db upgrade``.

Each migration is a file ``NNNN_<name>.sql`` in this folder. ``upgrade`` applies
the ones a database lacks, in order, each in a transaction of its own together
with its row in ``schema_migrations`` (version, name, checksum, applied_at): a
migration lands whole or not at all, and a failed one leaves the versions
before it in place.

Safe to run twice (an applied version is skipped) and concurrently: the whole
upgrade holds a PostgreSQL advisory lock keyed on the current schema, so a
second ``upgrade`` waits for the first and then finds nothing to do.

The tables go into the first schema of the connection's ``search_path``
(``public`` by default); a URL with ``?options=-c%20search_path%3Dother`` puts
them elsewhere, which is how the tests keep apart on a shared server.

A shipped migration is never edited once released: a change is a new file.
``upgrade`` warns when an applied migration's checksum differs from the file's.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from progress_service.errors import BackendUnavailable
from progress_service.postgres import one_line

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock(classid, objid): "prog", and the schema the tables go into.
LOCK_CLASS = 0x70726F67

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def __str__(self) -> str:
        return f"{self.version:04d}_{self.name}"


@cache
def available() -> tuple[Migration, ...]:
    """Every migration shipped in this folder, in version order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_<name>.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration files share a version: {versions}")
    return tuple(found)


def latest_version() -> int:
    return available()[-1].version if available() else 0


def connect(database_url: str, *, connect_timeout: float = 10) -> psycopg.Connection:
    """An autocommit connection, or ``BackendUnavailable`` naming the server."""
    try:
        return psycopg.connect(
            database_url,
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout)),
            application_name="progress-service db",
        )
    except psycopg.OperationalError as exc:
        raise BackendUnavailable(f"postgres: {one_line(exc)}") from exc


def applied_versions(conn: psycopg.Connection) -> dict[int, str]:
    """version -> checksum of what ``schema_migrations`` records (empty if it is missing)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(v): c for v, c in rows}


def upgrade(database_url: str, *, connect_timeout: float = 10) -> list[Migration]:
    """Apply every pending migration; return those applied now (empty: up to date)."""
    with connect(database_url, connect_timeout=connect_timeout) as conn:
        try:
            conn.execute(
                "SELECT pg_advisory_lock(%s, hashtext(coalesce(current_schema(), '')))",
                (LOCK_CLASS,),
            )
            try:
                return _upgrade_locked(conn)
            finally:
                if not conn.closed:
                    conn.execute(
                        "SELECT pg_advisory_unlock(%s, hashtext(coalesce(current_schema(), '')))",
                        (LOCK_CLASS,),
                    )
        except psycopg.OperationalError as exc:
            raise BackendUnavailable(f"postgres: {one_line(exc)}") from exc


def _upgrade_locked(conn: psycopg.Connection) -> list[Migration]:
    schema = conn.execute("SELECT current_schema()").fetchone()
    if schema is None or schema[0] is None:
        raise BackendUnavailable(
            "postgres: no schema of the search_path exists to create the tables in"
        )
    conn.execute(CREATE_MIGRATIONS_TABLE)
    done = applied_versions(conn)
    shipped = {m.version: m for m in available()}
    for version, checksum in sorted(done.items()):
        migration = shipped.get(version)
        if migration is None:
            logger.warning("schema: version %d is applied but unknown to this code (newer code ran?)",
                           version)
        elif migration.checksum != checksum:
            logger.warning("schema: migration %s changed since it was applied; "
                           "ship a change as a new migration", migration)
    applied = []
    for migration in available():
        if migration.version in done:
            continue
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        logger.info("schema: applied migration %s in schema %s", migration, schema[0])
        applied.append(migration)
    return applied
