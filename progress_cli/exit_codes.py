"""What ``progress-service`` exits with: a job's outcome, or why the tool could not go on.

0, 1 and 2 are the documented job outcomes (``watch``, ``submit --wait``): a script
reads them as "completed", "failed", "canceled". Everything that is about the
tool itself (a bad argument, an unknown job, Redis or PostgreSQL not answering)
exits with a code of its own from BSD's ``sysexits.h``, so that "the job failed"
is never confused with "could not ask". ``run`` exits with its command's code.
"""

from __future__ import annotations

COMPLETED = 0  # also: any command that did what was asked
FAILED = 1  # the job failed; never an error of the tool itself
CANCELED = 2
USAGE = 64  # EX_USAGE: a bad argument or id, a job id already taken (argparse's usage errors too)
NOT_FOUND = 66  # EX_NOINPUT: no such job, in Redis or PostgreSQL
UNAVAILABLE = 69  # EX_UNAVAILABLE: Redis or PostgreSQL does not answer (or, for demo, does not start)
SOFTWARE = 70  # EX_SOFTWARE: an error of ours that no other code names (a bug)
CONFIG = 78  # EX_CONFIG: a setting is malformed or unusable, or the schema is missing or behind
TIMEOUT = 124  # --timeout passed first, as timeout(1) exits
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

HELP = f"""exit status:
  {COMPLETED}    done (watch, submit --wait, demo: the job completed)
  {FAILED}    the job failed (watch, submit --wait, demo)
  {CANCELED}    the job was canceled (watch, submit --wait, demo)
  {USAGE}   a bad argument or id, or a job id already taken
  {NOT_FOUND}   no such job (watch)
  {UNAVAILABLE}   Redis or PostgreSQL does not answer (demo: a server it starts does not)
  {SOFTWARE}   an error no other code names (a bug: please report it)
  {CONFIG}   the configuration is not usable: a malformed variable (REDIS_URL, ...),
       the database schema missing or behind (db upgrade), web's address taken
  {TIMEOUT}  --timeout passed before the job ended
  {INTERRUPTED}  interrupted (Ctrl-C)
  run exits with its command's code (128+N when killed by signal N)."""
