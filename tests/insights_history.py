"""A synthetic history of finished jobs for the insights tests, written with the mirror's own
upsert (``progress_service.mirror.job_row`` and ``UPSERT``), as the mirror writes real ones.

``seed(db_url, jobs)`` writes ``FinishedJob``s; each gets a history like a worker's:
per step a first entry that names it, then a few progress entries within it, then
the terminal entry (``step_durations`` reads the step changes, and must skip the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from progress_service.mirror import UPSERT, job_row
from progress_service.models import iso_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(at: datetime) -> str:
    return iso_ms((at - EPOCH) // timedelta(milliseconds=1))


@dataclass
class FinishedJob:
    job_id: str
    finished_at: datetime
    step_seconds: dict[str, float]  # the steps it ran, in order, and how long each took
    pipeline: str = "video"
    status: str = "completed"
    error: str | None = None
    steps: list[str] = field(default_factory=list)  # all the pipeline's steps (default: those it ran)
    paper_id: str = "31452104"

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds.values())

    def snapshot_and_history(self) -> tuple[dict, list[dict]]:
        steps = self.steps or list(self.step_seconds)
        started = self.finished_at - timedelta(seconds=self.seconds)
        history, at, seq = [], started, 0

        def entry(when: datetime, step: str | None, status: str, percent: float) -> None:
            nonlocal seq
            seq += 1
            history.append({"seq": seq, "at": iso(when), "progress_percent": percent,
                            "current_step": step, "status": status})

        entry(started - timedelta(seconds=1), None, "pending", 0)
        for i, (step, seconds) in enumerate(self.step_seconds.items()):
            entry(at, step, "running", 100 * i / len(steps))
            for k in (1, 2, 3):  # progress within the step: not a step change
                entry(at + timedelta(seconds=seconds * k / 4), step, "running", 100 * (i + k / 4) / len(steps))
            at += timedelta(seconds=seconds)
        done = list(self.step_seconds) if self.status == "completed" else list(self.step_seconds)[:-1]
        entry(self.finished_at, None if self.status == "completed" else list(self.step_seconds)[-1],
              self.status, 100 if self.status == "completed" else history[-1]["progress_percent"])
        snapshot = {
            "job_id": self.job_id, "paper_id": self.paper_id, "pipeline": self.pipeline,
            "status": self.status, "progress_percent": history[-1]["progress_percent"],
            "current_step": history[-1]["current_step"], "steps": steps, "completed_steps": done,
            "total_steps": len(steps), "message": None, "error": self.error, "result": None,
            "seq": seq, "created_at": history[0]["at"], "started_at": iso(started),
            "progress_updated_at": iso(self.finished_at), "finished_at": iso(self.finished_at),
            "heartbeat_at": iso(self.finished_at), "batch_id": None, "tags": [],
        }
        return snapshot, history


def seed(db_url: str, jobs: list[FinishedJob]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for job in jobs:
            conn.execute(UPSERT, job_row(*job.snapshot_and_history()))
