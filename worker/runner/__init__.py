"""Run one command as a tracked job: a subprocess, its output parsed, progress written.

    outcome = run_command(store, job_id, argv, steps=pipeline.steps,
                          weights=pipeline.weights, settings=settings)

The runner's parts, one module each:

- ``command``: the run from ``running`` to its end (start, end, kill, final write);
- ``reading``: the loop that reads the command's stdout and stderr concurrently;
- ``output``: each line parsed, progress written through the throttle, stderr kept;
- ``watcher``: heartbeats, and a kill when the job turns terminal under the run;
- ``recovery``: a job the store lost (Redis restarted empty) re-created, not abandoned;
- ``options``: ``RunOptions`` (``run_command``'s keywords), ``RunOutcome``, the job tag.

Nothing here knows RQ: ``worker.jobs`` wraps this for the queue, and
``progress-service run`` uses it directly. Every module logs to ``worker.runner``.
"""

from worker.process_tree import KILL_GRACE
from worker.runner.command import run_command
from worker.runner.options import (
    JOB_ID_ENV,
    JOB_TAG_ENV,
    RunOptions,
    RunOutcome,
    is_job_tag,
    job_tag,
)

__all__ = ["JOB_ID_ENV", "JOB_TAG_ENV", "KILL_GRACE", "RunOptions", "RunOutcome", "is_job_tag",
           "job_tag", "run_command"]
