"""The PostgreSQL mirror's side of the progress store (``progress_service.mirror``).

The due set holds finished job id -> when the mirror should try it next (ms, Redis
clock). ``MirrorSide`` is a part of ``ProgressStore``, kept in a module of its own:
its methods use the store's client, keys, scripts and error mapping.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable
from ..models import build_snapshot, history_entry, is_valid_id
from ..scripts import as_text as _text
from .part import StorePart

logger = logging.getLogger("progress_service.store")


class MirrorSide(StorePart):
    """``ProgressStore``'s methods for the mirror: the due set, and reads and expiries
    of finished jobs."""

    def mark_mirror_due(self, job_id: str, at_ms: int = 0) -> None:
        """Queue a finished job for the PostgreSQL mirror."""
        try:
            self.client.zadd(self.keys.mirror_due, {job_id: at_ms})
        except (RedisConnectionError, RedisTimeoutError):
            logger.warning("job %s: could not queue for the mirror; the sweep will find it", job_id)

    def claim_mirror_due(self, now_ms: int, count: int, lease_ms: int) -> list[str]:
        """Up to ``count`` ids due at ``now_ms``, longest due first, each due again only
        after ``lease_ms`` (``lua/claim_mirror_due-1.lua``): sweepers share the due jobs."""
        reply = self._call(self.scripts.claim_mirror_due, [self.keys.mirror_due], [now_ms, count, lease_ms])
        return [_text(x) for x in reply]

    def mirror_due_now(self) -> bool:
        """Whether a job is due for the mirror now."""
        now = self.server_time_ms()
        return bool(self._redis(lambda: self.client.zrangebyscore(self.keys.mirror_due, "-inf", now,
                                                                  start=0, num=1)))

    def requeue_mirror_due(self, job_ids: Iterable[str], at_ms: int = 0, *, only_queued: bool = False) -> None:
        """Make ``job_ids`` due for the mirror at ``at_ms`` (``only_queued``: those still in the set)."""
        due = dict.fromkeys(job_ids, at_ms)
        if due:
            self._redis(lambda: self.client.zadd(self.keys.mirror_due, due, xx=only_queued))

    def remove_mirror_due(self, job_ids: Sequence[str]) -> None:
        """Take ``job_ids`` out of the due set."""
        if job_ids:
            self._redis(lambda: self.client.zrem(self.keys.mirror_due, *job_ids))

    def expire_mirrored(self, seqs: Mapping[str, int]) -> dict[str, str]:
        """Job id -> ``lua/expire_mirrored-2.lua``'s answer (``expiring``, ``changed``,
        ``running``, ``gone``) for jobs PostgreSQL now holds at ``seqs[job_id]``: a landed
        job's expiry (``PROGRESS_JOB_TTL`` after it finished) is set only now."""
        k = self.keys
        ttl = self.settings.job_ttl
        ids = list(seqs)
        script = self.scripts.expire_mirrored
        if self.is_cluster:  # redis-py refuses scripts in cluster pipelines
            replies = [self._call(script, [k.job(j), k.history(j)], [seqs[j], ttl]) for j in ids]
        else:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                script(keys=[k.job(job_id), k.history(job_id)], args=[seqs[job_id], ttl], client=pipe)
            replies = self._redis(pipe.execute) if ids else []
        return {j: _text(r) for j, r in zip(ids, replies, strict=True)}

    def job_states(self, job_ids: Sequence[str]) -> dict[str, tuple[str | None, int | None]]:
        """Each job's status and seq (None, None: gone), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), "status", "seq")
        replies = self._redis(pipe.execute)
        return {j: _status_seq(reply) for j, reply in zip(job_ids, replies, strict=True)}

    def read_for_mirror(self, job_ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Job id -> (snapshot, whole history) of each job Redis holds among the valid ``job_ids``.

        One script call per job (``lua/read_for_mirror-2.lua``), pipelined: the hash and
        the whole history come back as one JSON string each. ``is_stale`` and
        ``eta_seconds`` are not derived (False, None).
        """
        valid = [j for j in job_ids if is_valid_id(j)]
        k = self.keys
        script = self.scripts.read_for_mirror
        if self.is_cluster:  # redis-py refuses scripts in cluster pipelines
            replies = [self._call(script, [k.job(j), k.history(j)], []) for j in valid]
        else:
            pipe = self.client.pipeline(transaction=False)
            for job_id in valid:
                script(keys=[k.job(job_id), k.history(job_id)], client=pipe)
            replies = self._redis(pipe.execute) if valid else []
        s = self.settings
        out = {}
        for job_id, reply in zip(valid, replies, strict=True):
            if not reply:
                continue
            fields, raw_history = json.loads(_text(reply))
            snap = build_snapshot(fields, 0, stale_after=s.stale_after,
                                  pending_stale_after=s.pending_stale_after)
            out[job_id] = (snap, [history_entry(e) for e in raw_history or []])
        return out

    def hold_for_mirror(self, job_ids: Sequence[str]) -> int:
        """Make each job's hash and history persistent until the mirror lands it
        (``expire_mirrored``); return how many jobs had an expiry (set by an older version)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.persist(k.job(job_id))
            pipe.persist(k.history(job_id))
        return sum(self._redis(pipe.execute)[::2])

    def scan_job_ids(self) -> Iterator[str]:
        """Every job id Redis holds a hash of (SCAN: in no order, possibly one twice)."""
        k = self.keys
        head, tail = len(k.prefix) + 2, -1
        try:
            for raw in self.client.scan_iter(match=k.job_pattern(), count=1000, _type="hash"):
                key = _text(raw)
                job_id = key[head:tail]
                # The pattern also matches "<prefix>:{id}:history" and the like; only a job
                # hash is exactly "<prefix>:{<id>}".
                if key.endswith("}") and is_valid_id(job_id) and key == k.job(job_id):
                    yield job_id
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc


def _status_seq(reply: Sequence[Any]) -> tuple[str | None, int | None]:
    status, seq = reply
    return (None, None) if status is None else (_text(status), int(seq))
