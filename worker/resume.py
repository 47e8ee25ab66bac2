"""A resumable pipeline's retry starts in a copy of the previous attempt's output folder.

A job that retries another (``retry_of``, see ``progress_service.retries``) of a pipeline
declared ``resumable`` gets, before its command starts, a copy of the folder the previous
attempt wrote (``$PROGRESS_OUTPUT_DIR/<retry_of>/``) in its own
(``$PROGRESS_OUTPUT_DIR/<job_id>/``), and the environment variable ``PROGRESS_RESUME_FROM``
naming the previous folder. The command, which skips a step whose output is there and valid,
then runs only the steps left. A copy, not links: the previous attempt's files stay as they
were whatever the new run writes, and ``shutil.copy2`` keeps their times (a skipped step's
output keeps the mtime its attempt gave it). A folder that is gone (another machine, a
cleaned temp dir) leaves the retry to run every step.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["RESUME_FROM_ENV", "copy_previous_output"]

RESUME_FROM_ENV = "PROGRESS_RESUME_FROM"


def copy_previous_output(previous: Path, out_dir: Path, job_id: str) -> bool:
    """Copy ``previous`` (the previous attempt's folder) into ``out_dir``; False if there is
    none to copy. Symbolic links are copied as links, never followed out of the folder."""
    if not previous.is_dir():
        logger.warning("job %s: the previous attempt's folder %s is gone: every step runs again",
                       job_id, previous)
        return False
    try:
        shutil.copytree(previous, out_dir, symlinks=True, copy_function=shutil.copy2, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:  # a full disk, a file unreadable: what was copied is checked
        logger.warning("job %s: could not copy all of %s (%s): the steps whose output is missing "
                       "run again", job_id, previous, exc)
        return False
    logger.info("job %s: resumes in a copy of %s", job_id, previous)
    return True
