"""The ETA's side of the progress store: each pipeline's step statistics in Redis
(``progress_service.step_stats``), and the ETA of the snapshots the store reads
(``progress_service.eta``).

The statistics are a small hash per pipeline, ``<prefix>:stepstats:{<pipeline>}``, written
by the mirror after each batch it lands and read here; a store keeps what it read for
``STATS_TTL`` seconds, so a snapshot read costs no extra round trip most of the time. A
pending job's wait in the queue needs RQ, which the core does not import: whoever has it
(the web app, ``progress-service watch``) gives the store a ``queue_probe``
(``progress_service.queue.RQQueueProbe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..eta import QueuePlace, pending_estimate
from ..models import Status
from ..scripts import as_text as _text
from ..step_stats import StepStats, from_hash, to_hash
from .part import StorePart

logger = logging.getLogger("progress_service.store")

STATS_TTL = 5.0  # seconds a store keeps a pipeline's statistics before reading them again


class QueueProbe(Protocol):
    """Where pending jobs wait: job id -> its place (jobs the queue does not hold: left out)."""

    def places(self, job_ids: Sequence[str]) -> Mapping[str, QueuePlace]: ...


class EtaSide(StorePart):
    """``ProgressStore``'s methods for the ETA's statistics."""

    _stats_cache: dict[str, tuple[float, StepStats | None]]
    queue_probe: QueueProbe | None
    stats_ttl: float

    def save_step_stats(self, stats: StepStats) -> None:
        """Replace the pipeline's statistics in Redis (one MULTI on its one key)."""
        key = self.keys.step_stats(stats.pipeline)
        fields: dict[Any, Any] = dict(to_hash(stats))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        self._redis(pipe.execute)
        self._stats_cache[stats.pipeline] = (time.monotonic() + self.stats_ttl, stats)
        logger.info("pipeline %s: step statistics from %d completed jobs (job p50 %ss)",
                    stats.pipeline, stats.jobs, stats.job_p50)

    def step_stats(self, pipeline: str | None) -> StepStats | None:
        """The pipeline's statistics (None: none yet), read at most every ``stats_ttl`` seconds."""
        if not pipeline:
            return None
        cached = self._stats_cache.get(pipeline)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        raw = self._redis(lambda: self.client.hgetall(self.keys.step_stats(pipeline)))
        stats = from_hash(pipeline, {_text(k): _text(v) for k, v in raw.items()})
        self._stats_cache[pipeline] = (time.monotonic() + self.stats_ttl, stats)
        return stats

    def _add_queue_wait(self, snapshots: Sequence[dict[str, Any]]) -> None:
        """The ETA of the pending ``snapshots`` with their wait in the queue (``queue_probe``)."""
        if self.queue_probe is None:
            return
        pending = [s for s in snapshots if s["status"] == Status.PENDING.value and s["eta_seconds"] is not None]
        if not pending:
            return
        try:
            places = self.queue_probe.places([s["job_id"] for s in pending])
        except Exception as exc:  # noqa: BLE001 - RQ's Redis away: the ETA does without the wait
            logger.debug("the queue was not read for the ETA: %s", exc)
            return
        for snap in pending:
            place = places.get(snap["job_id"])
            if place is not None:
                snap["eta_seconds"], snap["eta_source"] = pending_estimate(self.step_stats(snap["pipeline"]), place)
