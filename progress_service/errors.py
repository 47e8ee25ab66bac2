"""The small error hierarchy; the HTTP layer maps each class to a status code."""

from __future__ import annotations


class ProgressError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"


class InvalidInput(ProgressError, ValueError):
    """Bad input: an id, a percent, a status, a step (HTTP 400)."""

    code = "invalid_input"


class JobNotFound(ProgressError, LookupError):
    """No such job (HTTP 404)."""

    code = "not_found"


class JobConflict(ProgressError):
    """The request conflicts with the job's state, e.g. it exists already (HTTP 409)."""

    code = "conflict"


class BackendUnavailable(ProgressError):
    """Redis or PostgreSQL does not answer (HTTP 503)."""

    code = "backend_unavailable"


class PostgresUnavailable(BackendUnavailable):
    """PostgreSQL does not answer, or refuses the mirror's statements (HTTP 503)."""


class SchemaMissing(PostgresUnavailable):
    """PostgreSQL answers, but ``progress_jobs`` is missing or older than this code:
    run ``progress-service db upgrade`` (HTTP 503)."""

    code = "schema_missing"


class Unauthorized(ProgressError):
    """A writing request without the right bearer token (HTTP 401)."""

    code = "unauthorized"
