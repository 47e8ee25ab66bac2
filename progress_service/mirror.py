"""Finished jobs -> PostgreSQL: the permanent record once Redis expires a job.

When the store accepts a terminal update it adds the job id to the
``<prefix>:mirror:due`` sorted set (scored by the time of the next try, in ms).
A :class:`Mirror` drains that set::

    mirror = Mirror(store, settings.database_url)
    mirror.sweep()                      # every job due now, in batches
    mirror.run_forever(stop_event)      # the same, in a loop (a worker's daemon thread)
    mirror.backfill()                   # SCAN Redis for finished jobs PostgreSQL lacks
    mirror.fetch(job_id)                # the snapshot PostgreSQL keeps, or None

Each batch is claimed (so that the mirror loops of several workers share the
work), then read from Redis in one pipelined round trip, then upserted with one
``executemany`` in one transaction. The upsert keeps the row
with the higher ``seq`` inside the statement (``ON CONFLICT ... WHERE
progress_jobs.seq < EXCLUDED.seq``), so replays, racing sweepers and backfills
never overwrite a newer row. A due entry is removed only after its row landed;
when PostgreSQL fails, the batch's entries are re-scored with exponential
back-off (``retry_base`` doubling up to ``retry_max`` seconds), so nothing is
lost and a dead database is not hammered. A job whose row is new (``RETURNING``)
goes to the duration histograms of ``/metrics`` (``duration_histograms``): once.

No finished job leaves Redis unmirrored: ``lua/update_progress-2.lua`` writes
down when a finished job expires (``PROGRESS_JOB_TTL`` after it finished) but
keeps its keys persistent; only once its row has landed does
``lua/expire_mirrored-2.lua`` set that expiry. A job nothing mirrors waits in
Redis (and in the due set) for as long as it takes. (The one exception: a row
PostgreSQL refuses outright, logged as an error, expires as if it had landed.)

Every PostgreSQL access goes through a :class:`~progress_service.postgres.PostgresPool`:
at most ``timeout`` seconds in all, a pool so that no caller waits on another's
hung connection, and a fail-fast window after PostgreSQL did not answer.

The mirror creates no table itself: the schema comes from ``progress-service
db upgrade`` (``progress_service.migrations``); without it every write fails
with :class:`SchemaMissing`, which says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from . import duration_histograms
from .batches import is_finished, member_entry
from .errors import BackendUnavailable, InvalidInput, PostgresUnavailable, SchemaMissing
from .models import TERMINAL_VALUES, is_valid_id, iso_ms, validate_id
from .postgres import PostgresPool, one_line
from .step_stats import refresh as refresh_step_stats
from .store import ProgressStore

logger = logging.getLogger(__name__)

JobRow = tuple[Any, ...]  # one progress_jobs row, in UPSERT's parameter order

TABLE = "progress_jobs"
# Every snapshot field but the derived is_stale / eta_seconds, then the history.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "text"),
    ("paper_id", "text"),
    ("pipeline", "text"),
    ("status", "text"),
    ("progress_percent", "float8"),
    ("current_step", "text"),
    ("steps", "jsonb"),
    ("completed_steps", "jsonb"),
    ("total_steps", "int4"),
    ("message", "text"),
    ("error", "text"),
    ("result", "jsonb"),
    ("seq", "int8"),
    ("created_at", "timestamptz"),
    ("started_at", "timestamptz"),
    ("progress_updated_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("heartbeat_at", "timestamptz"),
    ("batch_id", "text"),
    ("tags", "jsonb"),
    ("attempt", "int4"),
    ("retry_of", "text"),
    ("history", "jsonb"),
)
_NAMES = [name for name, _ in COLUMNS]
_PIPELINE, _STATUS = _NAMES.index("pipeline"), _NAMES.index("status")
UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_NAMES)}, mirrored_at)"
    f" VALUES ({', '.join(f'%s::{kind}' for _, kind in COLUMNS)}, now())"
    f" ON CONFLICT (job_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in _NAMES[1:])
    + f", mirrored_at = now() WHERE {TABLE}.seq < EXCLUDED.seq"
    # each row written, and whether it is new (xmax is 0 on a row this statement inserted)
    + f" RETURNING job_id, {TABLE}.xmax = 0"
)
_SNAPSHOT_FIELDS = _NAMES[:-1]  # without history
SELECT = f"SELECT {', '.join(_SNAPSHOT_FIELDS)} FROM {TABLE}"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
T = TypeVar("T")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_ms((value - _EPOCH) // _MS)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _strip_nul(value: Any) -> Any:
    """PostgreSQL's text and jsonb refuse NUL characters: replace them (the slow path)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    return value


def job_row(snapshot: dict[str, Any], history: list[dict[str, Any]]) -> JobRow:
    """The ``progress_jobs`` row of a finished job's snapshot and history (UPSERT's parameters)."""
    s = snapshot
    return (
        s["job_id"], s["paper_id"], s["pipeline"], s["status"], float(s["progress_percent"]),
        s["current_step"], _dumps(s["steps"]), _dumps(s["completed_steps"]), s["total_steps"],
        s["message"], s["error"], _dumps(s["result"]), s["seq"],
        s["created_at"], s["started_at"], s["progress_updated_at"], s["finished_at"],
        s["heartbeat_at"], s.get("batch_id"), _dumps(s.get("tags") or []), int(s.get("attempt") or 1),
        s.get("retry_of"), _dumps(history),
    )  # fmt: skip


BATCH_TABLE = "progress_batches"
BATCHES_EVERY = 10.0  # seconds between two looks at the open batches (run_forever)
# A finished batch's snapshot, every field but the derived eta_seconds.
BATCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("batch_id", "text"), ("name", "text"), ("pipeline", "text"), ("tags", "jsonb"),
    ("job_ids", "jsonb"), ("total", "int4"), ("pending", "int4"), ("running", "int4"),
    ("completed", "int4"), ("failed", "int4"), ("canceled", "int4"),
    ("progress_percent", "float8"), ("status", "text"), ("created_at", "timestamptz"),
    ("finished_at", "timestamptz"),
)
_BATCH_NAMES = [name for name, _ in BATCH_COLUMNS]
# A finished batch no longer changes: the first copy stays (a later one is the same).
BATCH_INSERT = (
    f"INSERT INTO {BATCH_TABLE} ({', '.join(_BATCH_NAMES)})"
    f" VALUES ({', '.join(f'%s::{kind}' for _, kind in BATCH_COLUMNS)})"
    " ON CONFLICT (batch_id) DO NOTHING"
)


def _returned(cur: psycopg.Cursor[Any]) -> list[tuple[str, bool]]:
    """What an ``executemany(..., returning=True)`` of UPSERT returned, over every row."""
    out: list[tuple[str, bool]] = []
    while True:
        out += cur.fetchall()
        if not cur.nextset():
            return out


def batch_row(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    """The ``progress_batches`` row of a finished batch's snapshot."""
    return tuple(_dumps(snapshot[name]) if kind == "jsonb" else snapshot[name]
                 for name, kind in BATCH_COLUMNS)


class Mirror:
    """Copies finished jobs from the progress store into PostgreSQL's ``progress_jobs``.

    Up to ``pool_size`` PostgreSQL connections, opened on first use and dropped
    after a failure; one Mirror is safe to share between threads (the web app does).
    ``timeout`` bounds each access (``connect_timeout`` the connecting part of it);
    ``recheck_after`` is how long callers fail fast after PostgreSQL did not answer.
    """

    def __init__(
        self,
        store: ProgressStore,
        database_url: str,
        *,
        batch_size: int = 500,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        lease: float = 60.0,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        pool_size: int = 4,
        recheck_after: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.database_url = database_url
        self.batch_size = batch_size
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.lease = lease  # seconds a claimed due entry waits before another sweeper may take it
        self.failures = 0  # PostgreSQL failures in a row, for the back-off
        self.postgres_ok: bool | None = None  # None until the first write or read
        self._postgres = PostgresPool(database_url, timeout=timeout, connect_timeout=connect_timeout,
                                      pool_size=pool_size, recheck_after=recheck_after,
                                      application_name="progress-service mirror")

    # -- writing ----------------------------------------------------------

    def mirror_job(self, job_id: str) -> bool:
        """Upsert one job now. True if it is finished and PostgreSQL holds it at its
        current seq (or a newer one); False if Redis holds no finished job of that id.
        Raises ``BackendUnavailable`` if PostgreSQL (or Redis) does not answer."""
        validate_id(job_id)
        rows, handled = self._load([job_id])
        if not rows:
            return False
        self._write(rows)
        self._settle(handled)
        return True

    def sweep(self, limit: int | None = 500) -> int:
        """Mirror every job due now (at most ``limit``; None: no cap), in batches.

        Each batch is claimed first (``lua/claim_mirror_due-1.lua``): sweepers in
        several workers share the due jobs instead of all copying each one; a
        claim left by a sweeper that died expires after ``lease`` seconds.

        Returns the rows written (inserted, or updated to a higher seq). On a
        PostgreSQL failure the entries not yet landed are re-scored with back-off
        and ``BackendUnavailable`` (``SchemaMissing`` for a missing table) is raised.
        """
        written = 0
        taken = 0
        now = self.store.server_time_ms()
        lease = int(self.lease * 1000)
        while limit is None or taken < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - taken)
            ids = self.store.claim_mirror_due(now, size, lease)
            if not ids:
                break
            taken += len(ids)
            try:
                written += self._mirror_batch(ids)
            except PostgresUnavailable:
                self._retry_later(ids)
                raise
        return written

    def backfill(self) -> int:
        """Mirror every finished job Redis holds that PostgreSQL lacks (or holds at a lower seq).

        SCANs the job hashes, so it finds jobs whose due entry was lost (a writer
        died between its update and the ZADD). Returns the rows written.
        """
        written = 0
        batch: list[str] = []
        for job_id in self.store.scan_job_ids():
            batch.append(job_id)
            if len(batch) >= self.batch_size:
                written += self._backfill_batch(batch)
                batch = []
        if batch:
            written += self._backfill_batch(batch)
        return written

    def keep_batches(self, limit: int = 100) -> int:
        """Keep every open batch that has finished (at most ``limit`` looked at); return how many.

        A batch whose every member has finished is written to ``progress_batches``
        (members Redis has let go are read from ``progress_jobs``) and leaves the open
        batches; its hash expires like a finished job (``ProgressStore.get_batch``).
        """
        kept = 0
        for batch_id in self.store.open_batch_ids(limit):
            snap = self.store.get_batch(batch_id, find_missing=lambda job_id: member_entry(self.fetch(job_id)))
            if snap is not None and not is_finished(snap):
                continue
            if snap is not None:
                self.save_batch(snap)
                kept += 1
            self.store.forget_batch(batch_id)
        return kept

    def run_forever(self, stop_event: threading.Event, interval: float = 1.0) -> None:
        """Sweep every ``interval`` seconds until ``stop_event`` is set (a daemon thread's loop).

        Logs one line when PostgreSQL (or Redis) goes down and one when it is back;
        a full batch is followed at once by the next. Once ``stop_event`` is set it
        sweeps one last time (unless PostgreSQL is down), so a burst worker's last
        jobs land before it exits.
        """
        logger.info("mirror: started (every %gs, batches of %d)", interval, self.batch_size)
        redis_down = False
        batches_at = 0.0
        while not stop_event.is_set():
            busy = False
            try:
                busy = self.sweep(limit=self.batch_size * 10) > 0 and self.store.mirror_due_now()
                if time.monotonic() - batches_at >= BATCHES_EVERY:
                    batches_at = time.monotonic()
                    self.keep_batches()
                if redis_down:
                    logger.info("mirror: Redis is back")
                    redis_down = False
            except PostgresUnavailable:
                pass  # logged once, when it went down, by _failed
            except BackendUnavailable as exc:
                if not redis_down:
                    logger.warning("mirror: Redis is down (%s); retrying every %gs", exc, interval)
                    redis_down = True
            except Exception:  # a daemon thread's loop: anything else is logged, and swept again
                logger.exception("mirror: sweep failed; retrying in %gs", interval)
            if not busy:
                stop_event.wait(interval)
        if self.postgres_ok is not False:
            # One last sweep, so that a burst worker's final jobs land before it exits.
            try:
                self.sweep(limit=self.batch_size)
            except Exception as exc:  # noqa: BLE001 - best effort; the due set keeps them
                logger.info("mirror: the last sweep did not finish (%s); the due set keeps them", exc)
        self.close()
        logger.info("mirror: stopped")

    # -- reading ----------------------------------------------------------

    def fetch(self, job_id: str) -> dict[str, Any] | None:
        """The snapshot PostgreSQL keeps of a finished job, or None (for a job Redis expired).

        Besides the documented snapshot fields (``is_stale`` False, ``eta_seconds`` and ``eta_source`` None)
        it carries the row's ``history`` (a list) and ``mirrored_at`` (ISO-8601).
        """
        validate_id(job_id)
        rows = self._query(f"SELECT {', '.join(_SNAPSHOT_FIELDS)}, history, mirrored_at"
                           f" FROM {TABLE} WHERE job_id = %s", (job_id,))
        if not rows:
            return None
        *fields, history, mirrored_at = rows[0]
        return {**self._snapshot(fields), "history": history, "mirrored_at": _iso(mirrored_at)}

    def history(self, job_id: str) -> list[dict[str, Any]] | None:
        """The history PostgreSQL keeps of a finished job, or None."""
        validate_id(job_id)
        rows = self._query(f"SELECT history FROM {TABLE} WHERE job_id = %s", (job_id,))
        return rows[0][0] if rows else None

    def list_jobs(self, paper_id: str | None = None, status: str | None = None,
                  limit: int = 50, *, tag: str | None = None,
                  batch_id: str | None = None) -> list[dict[str, Any]]:
        """Finished jobs' snapshots, newest first, filtered like ``ProgressStore.list_jobs``."""
        where: list[str] = []
        params: list[Any] = []
        if tag is not None:
            where.append("tags @> %s::jsonb")
            params.append(_dumps([validate_id(tag, "tag")]))
        if batch_id is not None:
            where.append("batch_id = %s")
            params.append(validate_id(batch_id, "batch_id"))
        if paper_id is not None:
            where.append("paper_id = %s")
            params.append(validate_id(paper_id, "paper_id"))
        if status is not None:
            if status not in TERMINAL_VALUES:
                raise InvalidInput(f"PostgreSQL keeps finished jobs only; status {status!r} is none")
            where.append("status = %s")
            params.append(status)
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be from 1 to 1000, got {limit}")
        sql = SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC NULLS LAST, job_id DESC LIMIT %s"
        return [self._snapshot(row) for row in self._query(sql, (*params, limit))]

    def save_batch(self, snapshot: dict[str, Any]) -> bool:
        """Keep a finished batch (its member ids with it); True if this call wrote it."""
        if snapshot["status"] not in TERMINAL_VALUES:
            raise InvalidInput(f"only a finished batch is kept, not a {snapshot['status']} one")
        return self._run(lambda conn: conn.execute(BATCH_INSERT, batch_row(snapshot)).rowcount) == 1

    def fetch_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The snapshot PostgreSQL keeps of a finished batch, or None."""
        validate_id(batch_id, "batch_id")
        rows = self._query(f"SELECT {', '.join(_BATCH_NAMES)} FROM {BATCH_TABLE} WHERE batch_id = %s",
                           (batch_id,))
        if not rows:
            return None
        snap = dict(zip(_BATCH_NAMES, rows[0], strict=True))
        snap["progress_percent"] = _number(snap["progress_percent"])
        snap["created_at"], snap["finished_at"] = _iso(snap["created_at"]), _iso(snap["finished_at"])
        snap["eta_seconds"] = None
        return snap

    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read-only query, within the same deadline as every access."""
        return self._query(sql, params)

    def count(self) -> int:
        """How many rows ``progress_jobs`` holds."""
        return int(self._query(f"SELECT count(*) FROM {TABLE}")[0][0])

    def close(self) -> None:
        self._postgres.close()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals: the progress store ------------------------------------

    def load_rows(self, job_ids: Sequence[str]) -> list[JobRow]:
        """``progress_jobs`` rows (UPSERT's parameters) of the finished jobs among ``job_ids``."""
        return self._load(job_ids)[0]

    def _load(self, ids: Sequence[str]) -> tuple[list[JobRow], dict[str, int | None]]:
        """Rows of the finished jobs among ``ids``, and job id -> the seq handled (None: no row)."""
        found = self.store.read_for_mirror(ids)
        rows = []
        handled: dict[str, int | None] = dict.fromkeys(ids)
        for job_id in ids:
            if job_id not in found:
                logger.debug("job %s: gone from Redis; dropped from the mirror's due set", job_id)
                continue
            snap, history = found[job_id]
            if snap["status"] not in TERMINAL_VALUES:
                logger.debug("job %s: not finished; dropped from the mirror's due set", job_id)
                continue
            rows.append(job_row(snap, history))
            handled[job_id] = snap["seq"]
        return rows, handled

    def _settle(self, handled: dict[str, int | None]) -> None:
        """Remove handled entries from the due set, let the landed jobs expire, and put
        back any job that changed meanwhile.

        Each job is checked AFTER the ZREM (``lua/expire_mirrored-2.lua``): an update
        that finished the job again between our read and the ZREM shows there as a
        newer seq, and re-queues it; only a job PostgreSQL holds at its current seq
        gets its expiry.
        """
        if not handled:
            return
        self.store.remove_mirror_due(list(handled))
        seqs = {j: -1 if seq is None else seq for j, seq in handled.items() if is_valid_id(j)}
        outcomes = self.store.expire_mirrored(seqs)
        self.store.requeue_mirror_due([j for j, outcome in outcomes.items() if outcome == "changed"])

    def _retry_later(self, ids: Sequence[str]) -> None:
        """Re-score due entries at now + the back-off (only entries still there)."""
        delay = min(self.retry_base * 2 ** max(self.failures - 1, 0), self.retry_max)
        try:
            at = self.store.server_time_ms() + int(delay * 1000)
            self.store.requeue_mirror_due(ids, at, only_queued=True)
        except BackendUnavailable:
            logger.warning("mirror: could not re-score %d due jobs; they stay due now", len(ids))
            return
        logger.debug("mirror: %d jobs retried in %.1fs", len(ids), delay)
        self._hold(ids)

    def _hold(self, ids: Sequence[str]) -> None:
        """Keep jobs that PostgreSQL has not taken yet from expiring out of Redis.

        A job finished by this version has no TTL until its row lands; one finished
        by an older version (which set the TTL at once) loses it here.
        """
        try:
            held = self.store.hold_for_mirror(ids)
        except BackendUnavailable:
            logger.warning("mirror: could not hold %d unmirrored jobs in Redis", len(ids))
            return
        if held:
            logger.info("mirror: %d unmirrored jobs no longer expire until they land", held)

    def _backfill_batch(self, ids: list[str]) -> int:
        finished = {j: seq for j, (status, seq) in self.store.job_states(ids).items()
                    if status in TERMINAL_VALUES and seq is not None}
        if not finished:
            return 0
        held = dict(self._query(f"SELECT job_id, seq FROM {TABLE} WHERE job_id = ANY(%s)",
                                (list(finished),)))
        # Landed, but Redis never heard (the expiry was not set): let them expire now.
        self.store.expire_mirrored({j: seq for j, seq in finished.items() if held.get(j) == seq})
        missing = [j for j, seq in finished.items() if held.get(j, -1) < seq]
        if not missing:
            return 0
        logger.info("mirror: backfilling %d finished jobs PostgreSQL lacks", len(missing))
        return self._mirror_batch(missing)

    def _mirror_batch(self, ids: Sequence[str]) -> int:
        rows, handled = self._load(ids)
        written = self._write(rows) if rows else 0
        self._settle(handled)
        return written

    # -- internals: PostgreSQL --------------------------------------------

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(connection)`` within the pool's deadline; PostgreSQL's failures counted and
        logged, and raised as ``PostgresUnavailable`` (``SchemaMissing`` for a missing table)."""
        try:
            result = self._postgres.run(work)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        except PostgresUnavailable:
            self.failures += 1  # told at once: the back-off grows as if this try had failed
            raise
        self._succeeded()
        return result

    def _write(self, rows: list[JobRow]) -> int:
        """Upsert ``rows`` in one transaction; return how many were written.

        The jobs whose row is new go to the duration histograms (``_landed``): each
        finished job is counted once, however often it is written again."""

        def upsert(conn: psycopg.Connection) -> list[tuple[str, bool]]:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(UPSERT, rows, returning=True)
                    return _returned(cur)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                return self._write_one_by_one(conn, rows, exc)

        written = self._run(upsert)
        self._landed(rows, {job_id for job_id, new in written if new})
        return len(written)

    def _landed(self, rows: list[JobRow], new: set[str]) -> None:
        """The mirror's hook for jobs whose row is new: their durations, to the shared histograms
        of ``/metrics`` (``duration_histograms``; the fields it reads: steps decoded, and history),
        and the ETA's step statistics of their pipelines (``step_stats``) refreshed."""
        jobs = [dict(zip(_NAMES, row, strict=True)) for row in rows if row[0] in new]
        if jobs:
            duration_histograms.record_landed(self.store, [
                ({**job, "steps": json.loads(job["steps"])}, json.loads(job["history"])) for job in jobs])
        pipelines = {job["pipeline"] for job in jobs if job["status"] == "completed"}
        if pipelines:
            try:
                self._run(lambda conn: refresh_step_stats(conn, self.store, pipelines))
            except Exception as exc:  # noqa: BLE001 - the rows have landed; the ETA waits for the next batch
                logger.warning("mirror: step statistics of %s not refreshed: %s", ", ".join(sorted(pipelines)), exc)

    def _write_one_by_one(self, conn: psycopg.Connection, rows: list[JobRow],
                          exc: psycopg.Error) -> list[tuple[str, bool]]:
        """A row PostgreSQL refuses must not hold back its batch: write the rows one by one,
        retry a refused one with NUL characters replaced, and give up only on that row."""
        logger.warning("mirror: a batch of %d was refused (%s); writing row by row",
                       len(rows), one_line(exc))
        written: list[tuple[str, bool]] = []
        for row in rows:
            for attempt in (row, tuple(_strip_nul(v) for v in row)):
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute(UPSERT, attempt)
                        written += cur.fetchall()
                    break
                except (psycopg.DataError, psycopg.IntegrityError) as row_exc:
                    if attempt is not row:
                        logger.error("job %s: PostgreSQL refuses its row, not mirrored: %s",
                                     row[0], one_line(row_exc))
        return written

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(sql, params).fetchall())

    def _failed(self, exc: psycopg.Error) -> PostgresUnavailable:
        """Count the failure, log the first one of a run."""
        self.failures += 1
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            error: PostgresUnavailable = SchemaMissing(
                f"postgres: {one_line(exc)}: run progress-service db upgrade")
        else:
            error = PostgresUnavailable(f"postgres: {one_line(exc)}")
        if self.postgres_ok is not False:
            logger.warning("mirror: PostgreSQL is unavailable (%s); finished jobs wait in Redis", error)
        self.postgres_ok = False
        return error

    def _succeeded(self) -> None:
        if self.postgres_ok is False:
            logger.info("mirror: PostgreSQL is back")
        self.postgres_ok = True
        self.failures = 0

    def _snapshot(self, row: Sequence[Any]) -> dict[str, Any]:
        snap = dict(zip(_SNAPSHOT_FIELDS, row, strict=True))
        snap["progress_percent"] = _number(snap["progress_percent"])
        for name in ("created_at", "started_at", "progress_updated_at", "finished_at", "heartbeat_at"):
            snap[name] = _iso(snap[name])
        snap["is_stale"] = False
        snap["eta_seconds"] = snap["eta_source"] = None
        return snap
