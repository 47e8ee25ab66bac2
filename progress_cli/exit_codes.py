"""What ``progress-service`` exits with: a job's outcome, or why the tool could not go on.

0, 1 and 2 are CONTRACT's job outcomes (``watch``, ``submit --wait``): a script
reads them as "completed", "failed", "canceled". Everything that is about the
tool itself (a bad argument, an unknown job, Redis or PostgreSQL not answering)
exits with a code of its own from BSD's ``sysexits.h``, so that "the job failed"
is never confused with "could not ask". ``run`` exits with its command's code.
"""

from __future__ import annotations

COMPLETED = 0  # also: any command that did what was asked
FAILED = 1  # the job failed (or, for commands without a job outcome, something else went wrong)
CANCELED = 2
USAGE = 64  # EX_USAGE: a bad argument or id, a job id already taken (argparse's usage errors too)
NOT_FOUND = 66  # EX_NOINPUT: no such job, in Redis or PostgreSQL
UNAVAILABLE = 69  # EX_UNAVAILABLE: Redis or PostgreSQL does not answer
CONFIG = 78  # EX_CONFIG: the environment's configuration is invalid, or the schema is missing
TIMEOUT = 124  # --timeout passed first, as timeout(1) exits
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

HELP = f"""exit status:
  {COMPLETED}    done (watch, submit --wait: the job completed)
  {FAILED}    the job failed (watch, submit --wait); another error elsewhere
  {CANCELED}    the job was canceled (watch, submit --wait)
  {USAGE}   a bad argument or id, or a job id already taken
  {NOT_FOUND}   no such job (watch)
  {UNAVAILABLE}   Redis or PostgreSQL does not answer
  {CONFIG}   the configuration (environment, database schema) is not usable
  {TIMEOUT}  --timeout passed before the job ended
  {INTERRUPTED}  interrupted (Ctrl-C)
  run exits with its command's code (128+N when killed by signal N)."""
