"""The retries' side of the progress store: which job retries which (``progress_service.retries``
says how a retry is made).

One retry per job: ``<prefix>:{<job_id>}:retried`` holds the id of the job that retries
``job_id``, set only if absent (two retries asked at once make one job, and the other is told
which), and expiring with the job (``PROGRESS_JOB_TTL``). ``RetrySide`` is a part of
``ProgressStore``, kept in a module of its own.
"""

from __future__ import annotations

from ..models import validate_id
from ..scripts import as_text as _text
from .part import StorePart


class RetrySide(StorePart):
    """``ProgressStore``'s methods for retries: claiming a job's one retry."""

    def claim_retry(self, job_id: str, retry_id: str) -> str | None:
        """Record ``retry_id`` as the job that retries ``job_id``. None if this call recorded
        it; else the id already recorded (the job has been retried)."""
        validate_id(job_id)
        validate_id(retry_id, "retry_id")
        key = self.keys.retried(job_id)
        ttl = self.settings.job_ttl
        if self._redis(lambda: self.client.set(key, retry_id, nx=True, ex=ttl)):
            return None
        existing = self._redis(lambda: self.client.get(key))
        return _text(existing) if existing is not None else None

    def retried_by(self, job_id: str) -> str | None:
        """The id of the job that retries ``job_id``, if one was made (and not yet expired)."""
        raw = self._redis(lambda: self.client.get(self.keys.retried(validate_id(job_id))))
        return _text(raw) if raw is not None else None

    def release_retry(self, job_id: str, retry_id: str) -> None:
        """Forget ``retry_id`` as ``job_id``'s retry (it could not be made), if it still is."""
        key = self.keys.retried(validate_id(job_id))
        if self.retried_by(job_id) == retry_id:
            self._redis(lambda: self.client.delete(key))
