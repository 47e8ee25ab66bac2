"""Every Redis key and channel name, built in one place.

The job id sits in braces, a Redis Cluster hash tag, so every key of one job
lands in one slot and a Lua script may touch them together.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "progress") -> None:
        self.prefix = prefix
        self.all_events = f"{prefix}:events"
        """Pub/sub channel of every job."""
        self.jobs_index = f"{prefix}:jobs"
        """Sorted set of job ids scored by creation time (ms), newest last."""
        self.mirror_due = f"{prefix}:mirror:due"
        """Sorted set of finished job ids waiting for PostgreSQL, scored by next try (ms)."""
        self.stats = f"{prefix}:stats"
        """Hash of update counts by reason, summed over every process."""
        self.durations = f"{prefix}:metrics:durations"
        """Hash of the job and step duration histograms, summed over every process."""
        self.batches_index = f"{prefix}:batches"
        """Sorted set of the batches not yet kept in PostgreSQL, scored by creation time (ms)."""

    def job(self, job_id: str) -> str:
        """The job hash: the source of truth for one job."""
        return f"{self.prefix}:{{{job_id}}}"

    def history(self, job_id: str) -> str:
        """The job's capped history stream."""
        return f"{self.prefix}:{{{job_id}}}:history"

    def events(self, job_id: str) -> str:
        """Pub/sub channel of one job."""
        return f"{self.prefix}:{{{job_id}}}:events"

    def retried(self, job_id: str) -> str:
        """The id of the job that retries ``job_id`` (one retry per job; expires with the job)."""
        return f"{self.prefix}:{{{job_id}}}:retried"

    def paper_jobs(self, paper_id: str) -> str:
        """Sorted set of one paper's job ids scored by creation time (ms)."""
        return f"{self.prefix}:paper:{paper_id}:jobs"

    def batch(self, batch_id: str) -> str:
        """The batch hash: its name, pipeline, tags, member ids and percent high-water mark.

        Its own hash tag: on a cluster it sits in another slot than its members.
        """
        return f"{self.prefix}:batch:{{{batch_id}}}"

    def step_stats(self, pipeline: str) -> str:
        """The pipeline's step-duration statistics (``progress_service.step_stats``): one small hash,
        its own hash tag, so a cluster keeps it whole in one slot."""
        return f"{self.prefix}:stepstats:{{{pipeline}}}"

    def job_pattern(self) -> str:
        """SCAN pattern matching every job hash (and, filtered by caller, only those)."""
        return f"{self.prefix}:{{*}}"

    def queue_workers(self, queue: str) -> str:
        """Sorted set of the workers of RQ queue ``queue`` that announce their pipelines,
        scored by when their announcement expires (ms, Redis clock). On RQ's Redis."""
        return f"{self.prefix}:queue:{queue}:workers"

    def worker_pipelines(self, queue: str, worker: str) -> str:
        """One worker's announcement (JSON: its pipelines' steps), expiring unless refreshed."""
        return f"{self.prefix}:queue:{queue}:worker:{worker}"
