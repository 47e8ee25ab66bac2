"""progress-service: one source of truth for the progress of long pipeline jobs."""

from .config import Settings
from .errors import (
    BackendUnavailable,
    InvalidInput,
    JobConflict,
    JobNotFound,
    PostgresUnavailable,
    ProgressError,
    SchemaMissing,
    Unauthorized,
)
from .keys import Keys
from .models import Status
from .scripts import UpdateResult
from .store import ProgressStore
from .throttle import Throttle
from .tracking import TrackedJob

__all__ = [
    "BackendUnavailable", "InvalidInput", "JobConflict", "JobNotFound",
    "Keys", "PostgresUnavailable", "ProgressError", "ProgressStore", "SchemaMissing", "Settings",
    "Status", "Throttle", "TrackedJob", "Unauthorized", "UpdateResult",
]
__version__ = "0.1.0"
