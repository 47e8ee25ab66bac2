"""The batches' side of the progress store (``progress_service.batches`` says how a batch's
snapshot and event log stay consistent, on one Redis and on a cluster).

A batch is a hash of its own, ``<prefix>:batch:{<batch_id>}`` (name, pipeline, tags,
member ids in submit order, canceled flag, percent high-water mark), and an entry in
the open batches (``<prefix>:batches``) until PostgreSQL keeps it. Nothing of it is
written on a member's update path. ``BatchSide`` is a part of ``ProgressStore``, kept in
a module of its own: its methods use the store's client, keys, scripts and error mapping.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from ..batches import build_batch_snapshot, is_finished
from ..errors import BackendUnavailable, JobConflict
from ..models import entry_at_ms, history_entry, validate_id, validate_tags
from ..scripts import as_text as _text
from .part import StorePart

if TYPE_CHECKING:
    from ..step_stats import StepStats

logger = logging.getLogger("progress_service.store")

# what a batch's snapshot reads of each member (the last three for its ETA)
MEMBER_FIELDS = ("status", "progress_percent", "started_at_ms", "finished_at_ms", "current_step",
                 "completed_count", "step_started_ms")
# A history entry's stream id is the Redis clock at its XADD; its ``at`` the clock at its
# script's start: reading from this long before ``at`` misses none.
HISTORY_SLACK_MS = 5000
MemberEntry = dict[str, Any] | None


class BatchSide(StorePart):
    if TYPE_CHECKING:  # store/eta_side.py's
        def step_stats(self, pipeline: str | None) -> StepStats | None: ...

    """``ProgressStore``'s methods for batches: their hash, their members' states and histories."""

    def create_batch(self, batch_id: str, job_ids: Sequence[str], pipeline: str, *,
                     name: str | None = None, tags: Sequence[str] = ()) -> None:
        """Write the batch's hash (its members in submit order) before its members exist.

        Raises ``JobConflict`` if the batch exists already.
        """
        validate_id(batch_id, "batch_id")
        for job_id in job_ids:
            validate_id(job_id)
        now_ms = self.server_time_ms()
        mapping: dict[EncodableT, EncodableT] = {
            "batch_id": batch_id, "pipeline": validate_id(pipeline, "pipeline"), "name": name or "",
            "tags": json.dumps(validate_tags(list(tags))), "job_ids": json.dumps(list(job_ids)),
            "created_at_ms": str(now_ms), "canceled": "0", "percent_max": "0"}
        key = self.keys.batch(batch_id)
        if not self._redis(lambda: self.client.hsetnx(key, "batch_id", batch_id)):
            raise JobConflict(f"batch {batch_id} exists already")
        self._redis(lambda: self.client.hset(key, mapping=mapping))
        self._redis(lambda: self.client.zadd(self.keys.batches_index, {batch_id: now_ms}))
        logger.info("batch %s: created with %d jobs (%s)", batch_id, len(job_ids), pipeline)

    def delete_batch(self, batch_id: str) -> None:
        """Remove a batch's hash (a submit that could not create every member undoes it)."""
        validate_id(batch_id, "batch_id")
        self._redis(lambda: self.client.delete(self.keys.batch(batch_id)))
        self.forget_batch(batch_id)

    def batch_fields(self, batch_id: str) -> dict[str, str]:
        """The batch's hash (``{}`` if Redis does not hold it)."""
        validate_id(batch_id, "batch_id")
        raw = self._redis(lambda: self.client.hgetall(self.keys.batch(batch_id)))
        return {_text(k): _text(v) for k, v in raw.items()}

    def batch_state(self, batch_id: str) -> tuple[dict[str, str], list[MemberEntry], int] | None:
        """The batch's hash, one entry per member (None: Redis lacks it) and the server's
        clock; or None if Redis does not hold the batch.

        One ``HMGET`` per member: on one Redis all in one script call
        (``lua/read_members-n.lua``, one instant, one reply to parse), on a cluster in
        one pipeline split per node (a script may not touch keys of several slots).
        """
        fields = self.batch_fields(batch_id)
        if not fields:
            return None
        job_ids = json.loads(fields.get("job_ids") or "[]")
        keys = [self.keys.job(job_id) for job_id in job_ids]
        if not self.is_cluster:
            sec, usec, *rows = json.loads(self._call(self.scripts.read_members, keys, list(MEMBER_FIELDS)))
        else:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, *MEMBER_FIELDS)
            replies = self._redis(pipe.execute)
            rows = [[] if row[0] is None else [_text(v) if v is not None else "" for v in row]
                    for row in replies]
            sec, usec = self._redis(self.client.time)  # a cluster pipeline routes by key: the clock after
        members: list[MemberEntry] = [
            {name: v or None for name, v in zip(MEMBER_FIELDS, row, strict=True)} if row else None
            for row in rows
        ]
        return fields, members, int(sec) * 1000 + int(usec) // 1000

    def get_batch(self, batch_id: str, *,
                  find_missing: Callable[[str], MemberEntry] | None = None) -> dict[str, Any] | None:
        """The batch's snapshot (README, "Batches and tags"), or None if Redis does not hold it.

        ``find_missing(job_id)`` gives a member entry for a member Redis has let go
        (the web reads PostgreSQL's copy). The percent shown is the batch's
        high-water mark after this read raised it; a finished batch gets the TTL of
        a finished job.
        """
        state = self.batch_state(batch_id)
        if state is None:
            return None
        fields, members, now_ms = state
        if find_missing is not None:
            job_ids = json.loads(fields.get("job_ids") or "[]")
            members = [m if m is not None else find_missing(j) for j, m in zip(job_ids, members, strict=True)]
        snap = build_batch_snapshot(fields, members, now_ms, self.step_stats(fields.get("pipeline")))
        mark = self.raise_batch_percent(batch_id, snap["progress_percent"])
        if mark is not None and mark > snap["progress_percent"]:
            snap["progress_percent"] = int(mark) if mark.is_integer() else mark
        if is_finished(snap) and self.settings.job_ttl:
            self._redis(lambda: self.client.expire(self.keys.batch(batch_id), self.settings.job_ttl, nx=True))
        return snap

    def raise_batch_percent(self, batch_id: str, percent: float) -> float | None:
        """Raise the batch's percent high-water mark to ``percent``; the mark after, or None
        if the batch is gone (``lua/batch_percent-1.lua``)."""
        mark = self._call(self.scripts.batch_percent, [self.keys.batch(batch_id)], [repr(float(percent))])
        return None if mark is None else float(mark)

    def mark_batch_canceled(self, batch_id: str) -> bool:
        """Flag the batch canceled; False if Redis does not hold it."""
        key = self.keys.batch(batch_id)
        if not self._redis(lambda: self.client.exists(key)):
            return False
        self._redis(lambda: self.client.hset(key, "canceled", "1"))
        return True

    def open_batch_ids(self, limit: int = 100) -> list[str]:
        """The oldest batches not yet kept in PostgreSQL (the mirror looks whether they finished)."""
        ids = self._redis(lambda: self.client.zrange(self.keys.batches_index, 0, max(limit, 1) - 1))
        return [_text(b) for b in ids]

    def forget_batch(self, batch_id: str) -> None:
        """Take a batch PostgreSQL keeps (or Redis lost) off the open batches."""
        self._redis(lambda: self.client.zrem(self.keys.batches_index, batch_id))

    def member_histories(self, job_ids: Sequence[str], after_ms: int = 0
                         ) -> tuple[int, list[list[dict[str, Any]]]]:
        """Every job's history entries made after about ``after_ms`` (each with ``at_ms`` too),
        and the last millisecond that is over on every node read: no entry made up to it can
        appear later (``progress_service.batches``' event log).

        One Redis: TIME and the reads in one ``MULTI``, so what was made before the clock
        read is there and what comes after is later. A cluster: the lowest clock of the
        primaries first, then the reads (per node), for the same reason node by node.
        """
        since = max(after_ms - HISTORY_SLACK_MS, 0)
        pipe = self.client.pipeline(transaction=not self.is_cluster)
        try:
            if self.is_cluster:
                # a cluster answers TIME per node: {node: (seconds, microseconds)}
                clocks = cast(dict[Any, tuple[int, int]],
                              self.client.time(target_nodes=redis.RedisCluster.PRIMARIES))
                now_ms = min(int(s) * 1000 + int(u) // 1000 for s, u in clocks.values())
            else:
                pipe.time()
            for job_id in job_ids:
                pipe.xrange(self.keys.history(job_id), min=str(since))
            replies = pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        if not self.is_cluster:
            sec, usec = replies.pop(0)
            now_ms = int(sec) * 1000 + int(usec) // 1000
        out = []
        for entries in replies:
            fields = [({_text(a): _text(b) for a, b in raw.items()}, _text(i)) for i, raw in entries]
            out.append([{**history_entry(f, i), "at_ms": entry_at_ms(f, i)} for f, i in fields])
        return now_ms - 1, out
