"""ProgressStore: the only code that talks to the progress store (Redis).

Every write goes through one Lua script (``lua/``), so the update rules (README)
hold however many writers race. Reads take the Redis server's clock in the
same round trip, so ``is_stale`` never depends on a worker's or web server's
clock.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, Unpack

import redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from ..config import Settings
from ..errors import BackendUnavailable, InvalidInput, JobConflict
from ..eta import estimate_fields
from ..keys import Keys
from ..models import (
    DEFAULT_STEPS,
    MAX_EXACT_INT,
    MAX_SEQ_FLOOR,
    TERMINAL_VALUES,
    Status,
    build_snapshot,
    history_entry,
    validate_id,
    validate_steps,
    validate_tags,
)
from ..scripts import Scripts, UpdateResult, invalid_from, parse_update_reply
from ..scripts import as_text as _text
from ..tracking import TrackedJob, TrackOptions
from .arguments import MAX_TEXT, lineage_args, resume_args
from .arguments import progress_arg as _progress_arg
from .arguments import result_arg as _result_arg
from .arguments import status_arg as _status_arg
from .arguments import step_arg as _step_arg
from .arguments import text_arg as _text_arg
from .arguments import whole as _whole
from .batch_side import BatchSide
from .eta_side import STATS_TTL, EtaSide, QueueProbe
from .events import EventFeed, Subscription, parse_event
from .histogram_side import HistogramSide
from .mirror_side import MirrorSide
from .retry_side import RetrySide
from .summary_side import SummarySide

logger = logging.getLogger(__name__)

__all__ = ["ETA_WINDOW_MS", "INDEX_MAX", "MAX_TEXT", "EventFeed", "ProgressStore", "QueueProbe", "RedisClient",
           "connect", "parse_event"]
_T = TypeVar("_T")

ETA_WINDOW_MS = 30_000  # the ETA's rate is the job's progress over about this long (read_job-2.lua)
INDEX_MAX = 10000  # job ids kept in the recent-jobs index
_KEY_CACHE_MAX = 4096  # job ids whose key names a store remembers


# What the store talks to: fakeredis' FakeRedis is a redis.Redis too.
RedisClient = redis.Redis | redis.RedisCluster


def connect(settings: Settings) -> RedisClient:
    """A client for the progress store: a plain Redis, or a Redis Cluster."""
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.progress_redis_url, decode_responses=True)
    return redis.Redis.from_url(settings.progress_redis_url, decode_responses=True, health_check_interval=30)


class ProgressStore(MirrorSide, BatchSide, HistogramSide, EtaSide, SummarySide, RetrySide):
    def __init__(self, client: RedisClient, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.keys = Keys(self.settings.key_prefix)
        self.scripts = Scripts(client)
        self.stats: Counter[str] = Counter()
        self._key_cache: dict[str, tuple[str, str, str]] = {}
        # update_progress-2.lua's ARGV[2..4], the same for every update: as text once
        self._update_common = (self.keys.all_events, str(self.settings.history_maxlen),
                               str(self.settings.job_ttl))
        # redis-py blocks scripts in cluster pipelines: there, batches go one call each.
        self.is_cluster = isinstance(client, redis.RedisCluster)
        # The ETA (store/eta_side.py): each pipeline's step statistics, kept stats_ttl seconds;
        # a pending job's place in the queue, from whoever has RQ; the rate's window (None:
        # ETA_WINDOW_MS).
        self._stats_cache = {}
        self.stats_ttl = STATS_TTL
        self.queue_probe = None
        self.eta_window_ms: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProgressStore:
        """The store the environment names (``Settings.from_env``)."""
        return cls.from_settings(Settings.from_env(environ))

    @classmethod
    def from_settings(cls, settings: Settings) -> ProgressStore:
        """The store ``settings`` name, on a client of its own (:func:`connect`)."""
        return cls(connect(settings), settings)

    # -- writing ----------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        paper_id: str,
        steps: Iterable[str] = DEFAULT_STEPS,
        pipeline: str = "video",
        *,
        seq_floor: int = 0,
        created_at_ms: int | None = None,
        started_at_ms: int | None = None,
        batch_id: str | None = None,
        tags: Sequence[str] = (),
        attempt: int = 1,
        retry_of: str | None = None,
        steps_done: int = 0,
        progress_percent: float = 0,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Create ``job_id`` in ``pending`` and return its snapshot.

        Its first ``seq`` is ``seq_floor + 1`` (default 1); ``created_at_ms`` and
        ``started_at_ms`` carry over a lost job's times (see :meth:`restore_job`,
        which a runner re-creating a running job uses instead).
        ``batch_id`` and ``tags`` go on the snapshot as given; so do ``attempt`` and
        ``retry_of`` (a retry: ``progress_service.retries``). A retry that resumes starts with
        its first ``steps_done`` steps completed, its bar at ``progress_percent`` (their
        share) and ``message`` saying so, also in its history's first entry.
        Raises ``JobConflict`` if the job exists already.
        """
        restore = resume_args(steps_done, progress_percent, message)
        return self._create(job_id, paper_id, steps, pipeline, seq_floor=seq_floor,
                            created_at_ms=created_at_ms, started_at_ms=started_at_ms, restore=restore,
                            batch_id=batch_id, tags=tags, attempt=attempt, retry_of=retry_of,
                            steps_done=steps_done)

    def restore_job(
        self,
        job_id: str,
        paper_id: str,
        steps: Iterable[str],
        pipeline: str,
        *,
        seq_floor: int,
        created_at_ms: int | None = None,
        started_at_ms: int | None = None,
        status: Status | str = Status.RUNNING,
        progress_percent: float = 0,
        current_step: str | None = None,
        message: str | None = None,
        batch_id: str | None = None,
        tags: Sequence[str] = (),
        attempt: int = 1,
        retry_of: str | None = None,
    ) -> dict[str, Any]:
        """Re-create a job the store lost (Redis restarted empty) at the state it had.

        One script call writes the job and publishes its one event already at
        ``status`` (``running``, or ``pending``), ``current_step`` (the steps
        before it done), ``progress_percent`` and ``message``, with the job's own
        ``created_at_ms`` / ``started_at_ms`` (Redis-clock times read before, not
        in the future; a running job without one starts now) and ``seq`` going
        on from ``seq_floor + 1``: readers, who drop any event not newer than what
        they have shown, take it, and none sees the job move back (README,
        "Redis"). Its ``batch_id``, ``tags``, ``attempt`` and ``retry_of`` are kept. Raises
        ``JobConflict`` if the job exists already, ``InvalidInput`` (before anything is
        written) for a bad argument.
        """
        status_arg = _status_arg(status)
        if status_arg not in (Status.PENDING.value, Status.RUNNING.value):
            raise InvalidInput(f"a job is restored pending or running, not {status_arg}")
        if progress_percent is None:
            raise InvalidInput("progress_percent must be a number from 0 to 100, got None")
        restore = [status_arg, _progress_arg(progress_percent),
                   "" if current_step is None else _step_arg(current_step),
                   "" if message is None else _text_arg(message, "message")]
        return self._create(job_id, paper_id, steps, pipeline, seq_floor=seq_floor,
                            created_at_ms=created_at_ms, started_at_ms=started_at_ms,
                            restore=restore, batch_id=batch_id, tags=tags, attempt=attempt,
                            retry_of=retry_of)

    def _create(self, job_id: str, paper_id: str, steps: Iterable[str], pipeline: str, *,
                seq_floor: int, created_at_ms: int | None, started_at_ms: int | None,
                restore: list[str], batch_id: str | None = None,
                tags: Sequence[str] = (), attempt: int = 1, retry_of: str | None = None,
                steps_done: int = 0) -> dict[str, Any]:
        """create_job-2.lua, then the job's place in the indexes; ``restore``: its ARGV[11..14]."""
        validate_id(job_id, "job_id")
        if batch_id is not None:
            validate_id(batch_id, "batch_id")
        lineage = lineage_args(attempt, retry_of, steps_done)
        labels = validate_tags(list(tags))
        validate_id(paper_id, "paper_id")
        validate_id(pipeline, "pipeline")
        names = validate_steps(steps)
        _whole(seq_floor, "seq_floor", MAX_SEQ_FLOOR)
        for name, value in (("created_at_ms", created_at_ms), ("started_at_ms", started_at_ms)):
            if value is not None:
                _whole(value, name, MAX_EXACT_INT)  # create_job-2.lua: and not in the future
        k = self.keys
        reply = self._call(
            self.scripts.create,
            [k.job(job_id), k.history(job_id)],
            [job_id, paper_id, pipeline, json.dumps(names), k.events(job_id), k.all_events,
             self.settings.history_maxlen, seq_floor,
             "" if created_at_ms is None else created_at_ms, "" if started_at_ms is None else started_at_ms,
             *(restore or ["", "", "", ""]), batch_id or "", json.dumps(labels) if labels else "",
             *lineage],
        )
        created, seq, created_ms = (int(x) for x in reply)
        if not created:
            raise JobConflict(f"job {job_id} exists already")
        paper_key = k.paper_jobs(paper_id)
        # One set per paper must not live forever, yet must outlive its newest job's
        # hash. The set's TTL is refreshed only here, at creation; the hash gets
        # job_ttl only when the job finishes, after waiting in the queue and running.
        # Twice job_ttl covers a job that takes up to job_ttl from creation to finish.
        # Ids older than that are dropped too: their hashes are gone.
        index_ttl = 2 * self.settings.job_ttl
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(k.jobs_index, {job_id: created_ms})
            pipe.zremrangebyrank(k.jobs_index, 0, -INDEX_MAX - 1)
            pipe.zadd(paper_key, {job_id: created_ms})
            pipe.zremrangebyrank(paper_key, 0, -INDEX_MAX - 1)
            pipe.zremrangebyscore(paper_key, "-inf", f"({created_ms - index_ttl * 1000}")
            pipe.expire(paper_key, index_ttl)
            pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        if restore and restore[0]:
            logger.info("job %s: restored for paper %s (%s, %s at %s%%, seq %d)", job_id, paper_id,
                        pipeline, restore[0], restore[1], seq)
        else:
            logger.info("job %s: created for paper %s (%s, %d steps%s)", job_id, paper_id, pipeline,
                        len(names), f", attempt {attempt} retrying {retry_of}" if retry_of else "")
        snap = self.get(job_id)
        assert snap is not None
        return snap

    def update(
        self,
        job_id: str,
        progress_percent: float | None = None,
        current_step: str | None = None,
        status: Status | str | None = None,
        message: str | None = None,
        error: str | None = None,
        result: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> UpdateResult:
        """Apply one update through the Lua script; see README's "The update rules".

        An argument left as None keeps the stored value. Invalid input raises
        ``InvalidInput`` (a ValueError) and changes nothing.
        """
        keys, args = self._update_call(job_id, progress_percent, current_step, status,
                                       message, error, result, force)
        res = parse_update_reply(self._call(self.scripts.update, keys, args))
        self._after_update(job_id, res)
        return res

    def update_many(self, updates: Iterable[Mapping[str, Any]]) -> list[UpdateResult]:
        """Apply many updates in one pipelined round trip; each is still atomic on its own.

        Each mapping holds ``job_id`` and ``update``'s keyword arguments. The
        results come back in order; an invalid one raises before anything is sent.
        """
        calls = [self._update_call(**u) for u in updates]
        if self.is_cluster:
            replies = self._update_replies_per_node(calls)
        else:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                self.scripts.update(keys=keys, args=args, client=pipe)
            try:
                replies = pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise BackendUnavailable(f"redis: {exc}") from exc
        results = []
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise invalid_from(reply) or reply
            results.append(parse_update_reply(reply))
        for (keys, _args), res in zip(calls, results, strict=True):
            self._after_update(self._job_of(keys[0]), res)
        return results

    def _update_replies_per_node(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """The cluster's update_many: one pipeline of EVALSHAs per node, on that node's own
        connection (redis-py refuses scripts in cluster pipelines; one call each held 10,000
        updates/s out of reach: bench/scale_bench.py). A reply other than the script's own
        (MOVED after a resharding, NOSCRIPT on a new node) is retried alone through the
        cluster client, which follows redirects and loads the script."""
        cluster = self.client
        assert isinstance(cluster, redis.RedisCluster)  # update_many, the one caller, checked is_cluster
        sha = self.scripts.update.sha
        per_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (keys, _args) in enumerate(calls):
            node = cluster.get_node_from_key(keys[0])
            per_node.setdefault(node.name, (node, []))[1].append(i)
        replies: list[Any] = [None] * len(calls)
        for node, indexes in per_node.values():
            pipe = node.redis_connection.pipeline(transaction=False)
            for i in indexes:
                keys, args = calls[i]
                pipe.evalsha(sha, len(keys), *keys, *args)
            try:
                out = pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError):
                out = [None] * len(indexes)  # the node moved or failed over: one at a time below
            for i, reply in zip(indexes, out, strict=True):
                replies[i] = reply
        for i, reply in enumerate(replies):
            if reply is None or (isinstance(reply, ResponseError) and invalid_from(reply) is None):
                keys, args = calls[i]
                replies[i] = self._call(self.scripts.update, keys, args)
        return replies

    def track(
        self,
        job_id: str,
        paper_id: str,
        steps: Iterable[str],
        **options: Unpack[TrackOptions],
    ) -> TrackedJob:
        """Report on ``job_id`` from the caller's own code, as a context manager (README,
        "Reporting from anywhere"): creates the job if missing, writes through the throttle
        with a heartbeat, completes it when the block ends or fails it with the exception's
        text. A Redis outage never raises in the block. ``options``: ``pipeline`` (the name a
        job it creates gets), ``weights``, ``timeout``; see ``progress_service.tracking``."""
        return TrackedJob(self, job_id, paper_id, steps, **options)

    def heartbeat(self, job_id: str) -> bool:
        """Stamp ``heartbeat_at`` (no seq, no event). False if the job is missing or finished."""
        validate_id(job_id)
        return bool(self._call(self.scripts.heartbeat, [self.keys.job(job_id)], []))

    # -- reading ----------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's snapshot, or None if Redis does not hold it."""
        job_key, history_key, _ = self._job_keys(job_id)  # validates the id on first sight
        reply = self._call(self.scripts.read, [job_key, history_key], [self._eta_window()])
        snap = self._snapshot_from_reply(reply)
        if snap is not None:
            self._add_queue_wait([snap])
        return snap

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Snapshots of the jobs Redis still holds, in the order asked (missing ones left out)."""
        for job_id in job_ids:
            validate_id(job_id)
        if not job_ids:
            return []
        k = self.keys
        window = self._eta_window()
        if self.is_cluster:
            replies = [self._call(self.scripts.read, [k.job(j), k.history(j)], [window]) for j in job_ids]
        else:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                self.scripts.read(keys=[k.job(job_id), k.history(job_id)], args=[window], client=pipe)
            try:
                replies = pipe.execute()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise BackendUnavailable(f"redis: {exc}") from exc
        snaps = [s for s in map(self._snapshot_from_reply, replies) if s is not None]
        self._add_queue_wait(snaps)
        return snaps

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's capped history, oldest first."""
        validate_id(job_id)
        try:
            entries = self.client.xrange(self.keys.history(job_id)) or []
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        return [history_entry({_text(a): _text(b) for a, b in (raw or {}).items()}, _text(entry_id))
                for entry_id, raw in entries]

    def recent_job_ids(self, limit: int = 50, paper_id: str | None = None) -> list[str]:
        """Job ids, newest first, from the recent-jobs index (or one paper's)."""
        if paper_id is not None:
            validate_id(paper_id, "paper_id")
            key = self.keys.paper_jobs(paper_id)
        else:
            key = self.keys.jobs_index
        try:
            return [_text(j) for j in self.client.zrevrange(key, 0, max(limit, 1) - 1)]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    def latest_job_id(self, paper_id: str) -> str | None:
        """The paper's latest job id that Redis still knows, or None."""
        ids = self.recent_job_ids(1, paper_id=paper_id)
        return ids[0] if ids else None

    def list_jobs(self, paper_id: str | None = None, status: str | None = None,
                  limit: int = 50, *, tag: str | None = None,
                  batch_id: str | None = None) -> list[dict[str, Any]]:
        """Snapshots newest first, filtered by paper, status, tag and batch."""
        if status is not None and status not in {s.value for s in Status}:
            raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}, got {status!r}")
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be from 1 to 1000, got {limit}")
        if tag is not None:
            validate_id(tag, "tag")
        if batch_id is not None:
            fields = self.batch_fields(batch_id)
            ids = list(reversed(json.loads(fields.get("job_ids") or "[]")))  # newest first
        else:
            filtered = status is not None or tag is not None
            ids = self.recent_job_ids(limit if not filtered else min(limit * 10, INDEX_MAX), paper_id=paper_id)
        snaps = self.get_many(ids)
        snaps = [s for s in snaps if (status is None or s["status"] == status)
                 and (tag is None or tag in s["tags"])
                 and (paper_id is None or s["paper_id"] == paper_id)]
        return snaps[:limit]

    def server_time_ms(self) -> int:
        """The Redis server's clock (``TIME``) in ms: the one clock of every snapshot."""
        sec, usec = self._redis(self.client.time)
        return int(sec) * 1000 + int(usec) // 1000

    def ping(self) -> None:
        """Raise ``BackendUnavailable`` unless the progress store answers."""
        self._redis(self.client.ping)

    def close(self) -> None:
        """Let go of the client's connections (a forked work horse closes its parent's)."""
        self.client.close()

    def events(self, job_id: str | None = None) -> EventFeed:
        """The parsed pub/sub events of ``job_id`` (None: of every job), from now on.

        Subscribed when this returns (``BackendUnavailable`` if Redis does not answer);
        use it as a context manager, or ``close()`` it.
        """
        channel = self.keys.all_events if job_id is None else self.keys.events(validate_id(job_id))
        # redis-py leaves Redis.pubsub and RedisCluster.pubsub unannotated, and mypy's
        # untyped_calls_exclude does not reach a call on a union of the two.
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        return EventFeed(pubsub, channel)

    def subscribe(self, job_id: str, *, timeout: float | None = None, idle_check: float = 5.0,
                  derived: bool = False) -> Iterator[dict[str, Any]]:
        """Yield the current snapshot, then each change once, until a terminal state.

        Subscribes first and reads the snapshot second, then drops every event
        whose ``seq`` is not newer: a late subscriber misses nothing and sees
        nothing twice. A gap in ``seq`` (a lost connection) is filled by a fresh
        read; so is a quiet spell of ``idle_check`` seconds. A snapshot made from
        an event keeps the derived fields of the last read (``eta_seconds``).
        With ``derived`` (a live bar), the job is read at least every ``idle_check``
        seconds, events or not, and a read is yielded also when only its derived
        fields moved (``eta_seconds``, ``is_stale``), at the same ``seq``: the ETA
        is the store's, and a stall shows. Raises
        ``JobNotFound`` for an unknown job, ``TimeoutError`` after ``timeout`` s,
        ``BackendUnavailable`` when Redis does not answer at the start. Once the
        snapshot is out, a Redis that goes away is waited for (one WARNING line), and
        what changed meanwhile is read when it is back. If it comes back empty (no
        persistence), the job is waited for up to ``worker_lost_after`` seconds: its
        runner re-creates it, with a higher seq (``worker.runner``).
        """
        yield from Subscription(self, job_id, timeout=timeout, idle_check=idle_check, derived=derived)

    # -- statistics -------------------------------------------------------

    def flush_stats(self) -> None:
        """Add this process's update counts to the shared ``<prefix>:stats`` hash."""
        if not self.stats:
            return
        counts, self.stats = self.stats, Counter()
        try:
            pipe = self.client.pipeline(transaction=False)
            for reason, n in counts.items():
                pipe.hincrby(self.keys.stats, reason, n)
            pipe.execute()
        except (RedisConnectionError, RedisTimeoutError):
            self.stats.update(counts)

    def read_stats(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.client.hgetall(self.keys.stats).items()}

    # -- internals --------------------------------------------------------

    def _update_call(self, job_id: str, progress_percent: object = None, current_step: object = None,
                     status: object = None, message: object = None, error: object = None,
                     result: object = None, force: object = False,
                     ) -> tuple[list[str], list[EncodableT]]:
        """update_progress-2.lua's KEYS and ARGV for one update: ``update``'s arguments, or an
        ``update_many`` mapping's, each checked here whatever its type (``InvalidInput``)."""
        job_key, history_key, channel = self._job_keys(job_id)
        if (current_step is None and status is None and message is None and error is None
                and result is None and not force):
            # a percent-only update, the common case: the arguments after the percent left off
            # (each costs the client's packing and the script's ARGV; bench/update_bench.py)
            return [job_key, history_key], [channel, *self._update_common, _progress_arg(progress_percent)]
        args: list[EncodableT] = [
            channel,
            *self._update_common,
            _progress_arg(progress_percent),
            "" if current_step is None else _step_arg(current_step),
            "" if status is None else _status_arg(status),
            "" if message is None else _text_arg(message, "message"),
            "" if error is None else _text_arg(error, "error"),
            "" if result is None else _result_arg(result),
            "1" if force else "0",
        ]
        return [job_key, history_key], args

    def _job_keys(self, job_id: str) -> tuple[str, str, str]:
        """The job's hash, history and channel names, validating the id on first sight.

        The hot path (one update per progress change) would otherwise redo the
        id check and three string builds on every call; bench/update_bench.py.
        """
        cached = self._key_cache.get(job_id) if type(job_id) is str else None
        if cached is None:
            validate_id(job_id)
            k = self.keys
            cached = (k.job(job_id), k.history(job_id), k.events(job_id))
            if len(self._key_cache) >= _KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[job_id] = cached
        return cached

    def _job_of(self, job_key: str) -> str:
        return job_key[len(self.keys.prefix) + 2:-1]

    def _after_update(self, job_id: str, res: UpdateResult) -> None:
        self.stats[res.reason] += 1
        if res.reason == "ok" and res.status in TERMINAL_VALUES:
            logger.info("job %s: -> %s (seq %d)", job_id, res.status, res.seq)
            self.mark_mirror_due(job_id)
        elif not res.accepted:
            logger.debug("job %s: update rejected (%s)", job_id, res.reason)

    def _redis(self, call: Callable[[], _T]) -> _T:
        """``call()``, with a Redis that does not answer raised as ``BackendUnavailable``."""
        try:
            return call()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    def _call(self, script: Script, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """The script's reply, as Redis converted it from Lua (a list or a number)."""
        try:
            try:
                # EVALSHA straight away: redis-py's Script.__call__ costs a few
                # microseconds per call on the hot path (bench/update_bench.py).
                return self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return script(keys=keys, args=args)  # loads it (Redis restarted, or a new node)
        except ResponseError as exc:
            invalid = invalid_from(exc)
            if invalid is not None:
                raise invalid from None
            raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    def _snapshot_from_reply(self, reply: Sequence[Any]) -> dict[str, Any] | None:
        flat_json, sec, usec, eta_at, eta_progress = reply
        flat = json.loads(flat_json)  # read_job sends the hash as one JSON array
        if not flat:
            return None
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        now_ms = int(sec) * 1000 + int(usec) // 1000
        points = [(int(eta_at), float(eta_progress))] if eta_at else []
        s = self.settings
        snap = build_snapshot(fields, now_ms, stale_after=s.stale_after, pending_stale_after=s.pending_stale_after)
        if snap["status"] not in TERMINAL_VALUES:
            stats = self.step_stats(snap["pipeline"])
            snap["eta_seconds"], snap["eta_source"] = estimate_fields(fields, now_ms, stats, points, snap["steps"])
        return snap

    def _eta_window(self) -> int:
        return ETA_WINDOW_MS if self.eta_window_ms is None else self.eta_window_ms

