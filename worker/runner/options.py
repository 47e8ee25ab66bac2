"""What a run is given (``RunOptions``) and what it gives back (``RunOutcome``).

Also the names the runner's modules share: the environment entries that mark a
job's processes, the errors a store call raises, and ``call_hook`` for the
caller's callbacks.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from progress_service import Settings, Status
from progress_service.errors import ProgressError
from progress_service.scripts import UpdateResult
from worker.process_tree import KILL_GRACE

logger = logging.getLogger("worker.runner")  # one logger for the runner's modules

JOB_ID_ENV = "PROGRESS_JOB_ID"  # in the command's environment: the job's id, for the pipeline's use
JOB_TAG_ENV = "PROGRESS_JOB_TAG"  # in the command's environment: marks this run's process tree

# What a call to the progress store raises: Redis away (BackendUnavailable, or a
# socket error on the way), Redis refusing (a ResponseError), the store refusing
# the values (InvalidInput). A bug raises something else and is not swallowed.
STORE_ERRORS = (ProgressError, RedisError, OSError)

OnWrite = Callable[[dict[str, Any], UpdateResult], None]


def job_tag(prefix: str, job_id: str) -> str:
    """A new ``PROGRESS_JOB_TAG=<prefix>:<job_id>:<token>`` entry, unique to one run.

    Every process of the run inherits it, and a kill looks for exactly this entry:
    not for the job id alone, which another deployment (another key prefix) or an
    earlier run of the same id may carry too.
    """
    return f"{JOB_TAG_ENV}={prefix}:{job_id}:{secrets.token_hex(8)}"


def is_job_tag(value: object) -> bool:
    """Whether ``value`` is an entry ``job_tag`` makes (so a kill by it is a kill of one run)."""
    return isinstance(value, str) and value.startswith(f"{JOB_TAG_ENV}=") and value.count(":") >= 2


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How ``run_command`` runs a command: its keyword arguments, in one object."""

    steps: Sequence[str]  # the pipeline's steps, in order
    settings: Settings
    weights: Sequence[float] | None = None  # each step's share of the bar
    cwd: str | os.PathLike[str] | None = None
    env: Mapping[str, str] | None = None  # the command's whole environment (default: this process's)
    on_write: OnWrite | None = None  # (fields, result) after each store write the throttle lets through
    on_start: Callable[[int], None] | None = None  # (pid) once the command runs
    on_output: Callable[[str, str], None] | None = None  # ("stdout" | "stderr", line) for every line
    timeout: float | None = None  # seconds; then the tree is killed and the job failed
    kill_grace: float = KILL_GRACE  # seconds between SIGTERM and SIGKILL
    describe_exception: Callable[[BaseException], str | None] | None = None  # names an exception
    tag: str | None = None  # the JOB_TAG_ENV entry marking the tree (default: a new ``job_tag``)


@dataclass
class RunOutcome:
    """How a command's run ended, as the store now records it."""

    job_id: str
    status: str  # completed | failed | canceled
    exit_code: int | None = None  # the command's; negative: killed by that signal; None: not started
    error: str | None = None
    result: dict[str, Any] | None = None
    pid: int | None = None
    survivors: list[int] = field(default_factory=list)  # pids left after a kill: should be none
    stopped_by: str | None = None  # why the runner killed the tree, if it did

    @property
    def shell_exit_code(self) -> int:
        """The exit status a shell would show: the command's own, 128+N for signal N,
        127 when it could not start, 130 when interrupted, 1 for another failure."""
        if self.exit_code is not None:
            return 128 - self.exit_code if self.exit_code < 0 else self.exit_code
        if self.stopped_by == "interrupted":
            return 130
        if self.stopped_by == "not started":
            return 127
        return 0 if self.status == Status.COMPLETED.value else 1


class Stop(Exception):
    """Internal: the watcher, a write or the deadline asked the read loop to stop (args[0]: why)."""


def call_hook(job_id: str, name: str, hook: Callable[..., Any] | None, *args: Any) -> Any:
    """Call one of the caller's callbacks; its failure is logged, never the run's end."""
    if hook is None:
        return None
    try:
        return hook(*args)
    except Exception:  # the caller's code, whatever it raises: a hook's bug must not leave a tree behind
        logger.exception("job %s: %s hook failed", job_id, name)
        return None
