"""The part of ``ProgressStore`` that reads jobs in brief: a few fields of many jobs at once, for
the live dashboard's counts by state (``web.live``), without the full snapshot's script per job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable
from ..models import validate_id
from ..scripts import as_text as _text
from .part import StorePart

SUMMARY_FIELDS = ("status", "seq", "paper_id", "pipeline", "tags", "batch_id", "created_at_ms")
SUMMARY_CHUNK = 500  # HMGETs per round trip


class SummarySide(StorePart):
    def job_summaries(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """For each job (in order), ``{"job_id", "status", "seq", "paper_id", "pipeline", "tags",
        "batch_id", "created_at_ms"}`` from one ``HMGET`` of its hash, or None if Redis does not
        hold it. Pipelined, ``SUMMARY_CHUNK`` jobs per round trip (on a cluster redis-py splits
        each pipeline per node)."""
        for job_id in job_ids:
            validate_id(job_id)
        out: list[dict[str, Any] | None] = []
        for start in range(0, len(job_ids), SUMMARY_CHUNK):
            chunk = job_ids[start:start + SUMMARY_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(self.keys.job(job_id), SUMMARY_FIELDS)
            try:
                replies = pipe.execute()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise BackendUnavailable(f"redis: {exc}") from exc
            out.extend(_summary(job_id, reply) for job_id, reply in zip(chunk, replies, strict=True))
        return out

    def recent_batch_ids(self, limit: int = 10) -> list[str]:
        """The newest batches Redis holds that PostgreSQL does not keep yet (open ones, and
        those finished a short while ago), newest first."""
        ids = self._redis(lambda: self.client.zrevrange(self.keys.batches_index, 0, max(limit, 1) - 1))
        return [_text(b) for b in ids]


def _summary(job_id: str, reply: Sequence[Any]) -> dict[str, Any] | None:
    values = dict(zip(SUMMARY_FIELDS, (None if v is None else _text(v) for v in reply), strict=True))
    if values["status"] is None or values["seq"] is None:
        return None  # expired, or never there
    return {
        "job_id": job_id,
        "status": values["status"],
        "seq": int(values["seq"]),
        "paper_id": values["paper_id"],
        "pipeline": values["pipeline"],
        "tags": json.loads(values["tags"] or "[]"),
        "batch_id": values["batch_id"] or None,
        "created_at_ms": int(values["created_at_ms"] or 0),
    }
