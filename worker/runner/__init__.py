"""Run one command as a tracked job (see ``worker.runner.command``)."""

from worker.runner.command import JOB_ID_ENV, KILL_GRACE, RunOutcome, run_command

__all__ = ["JOB_ID_ENV", "KILL_GRACE", "RunOutcome", "run_command"]
