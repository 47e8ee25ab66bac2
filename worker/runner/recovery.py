"""Recovery: a job the store lost while its command runs is re-created, not abandoned.

A job the store has lost (Redis restarted empty: a write answered ``not_found``, or a
heartbeat found no job) is not a reason to stop a healthy command: the runner
re-creates it (same id, paper, pipeline and steps, its ``seq`` going on above the
last one seen, so readers keep showing it) and re-applies what it has written so
far, with one WARNING line.
"""

from __future__ import annotations

from typing import Any

from progress_service import ProgressStore, Status
from progress_service.errors import BackendUnavailable, JobConflict
from progress_service.models import LINEAGE, lineage_of, ms_from_iso
from progress_service.scripts import UpdateResult
from worker.runner.options import logger

RESTORED = ("progress_percent", "current_step", "message")  # what re-creating a lost job carries over


class JobRecovery:
    """What re-creating job ``job_id`` needs, kept up to date by every write of its run."""

    def __init__(self, store: ProgressStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.spec: dict[str, Any] | None = None  # paper_id, pipeline, steps, times: read at the start
        self.last_seq = 0  # the highest seq the store has answered
        self.state: dict[str, Any] = {}  # step, percent, message the store accepted

    def read_spec(self) -> None:
        """Read the job's paper, pipeline, steps, batch, tags and attempt as the store has them
        (None if unreadable)."""
        try:
            snap = self.store.get(self.job_id)
        except BackendUnavailable as exc:
            logger.warning("job %s: cannot read the job (%s); if the store loses it, the "
                           "command will be stopped", self.job_id, exc)
            return
        if snap is None:
            return
        self.spec = {"paper_id": snap["paper_id"], "pipeline": snap["pipeline"], "steps": snap["steps"],
                     "created_at_ms": ms_from_iso(snap["created_at"]),
                     "started_at_ms": ms_from_iso(snap["started_at"]), **lineage_of(snap)}

    def record(self, fields: dict[str, Any], result: UpdateResult) -> None:
        """One write's answer: its seq, and what it set if the store accepted it."""
        self.last_seq = max(self.last_seq, result.seq)
        if result.accepted:
            self.state.update((k, v) for k, v in fields.items() if k in RESTORED)

    def recreate(self, fields: dict[str, Any]) -> None:
        """Re-create the job the store lost at the state it had, in one script call.

        ``store.restore_job`` writes it ``running`` at the step, percent and message
        the store last accepted, with ``fields`` (the write that found it gone, which
        is never behind them) laid over, and publishes that as its first event: no
        reader sees it pass through pending/0. Its seq goes on above the last one this
        run saw. A cancel is not lost this way: it leaves the job ``canceled``, which
        is ``terminal``, not ``not_found``.
        """
        spec = self.spec
        assert spec is not None
        logger.warning("job %s: the progress store lost the job (Redis restarted empty?); "
                       "re-creating it at seq > %d and carrying on", self.job_id, self.last_seq)
        state = {**self.state, **{k: v for k, v in fields.items() if k in RESTORED and v is not None}}
        if state.get("progress_percent", 0) >= 100:  # this write completes it: restore it before
            state["progress_percent"] = self.state.get("progress_percent", 0)
        try:
            snap = self.store.restore_job(self.job_id, spec["paper_id"], spec["steps"], spec["pipeline"],
                                          seq_floor=self.last_seq, created_at_ms=spec["created_at_ms"],
                                          started_at_ms=spec["started_at_ms"],
                                          status=Status.RUNNING.value, **state,
                                          **{k: spec[k] for k in LINEAGE})
            self.last_seq = max(self.last_seq, snap["seq"])
        except JobConflict:  # it is back already: bring it up to date (forward only)
            restored = self.store.update(self.job_id, status=Status.RUNNING.value, **state)
            self.last_seq = max(self.last_seq, restored.seq)
