"""The update and create scripts' arguments, checked and encoded (``lua/update_progress-2.lua``,
``lua/create_job-2.lua``): what the store refuses with ``InvalidInput`` before Redis sees it."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import InvalidInput
from ..models import MAX_ATTEMPT, MAX_EXACT_INT, Status, validate_id

MAX_TEXT = 8192  # characters of a message or an error


def whole(value: object, what: str, maximum: int) -> int:
    """``value`` if it is an int from 0 to ``maximum``, else ``InvalidInput``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidInput(f"{what} must be a whole number from 0 to {maximum}, got {value!r}")
    return value


def progress_arg(value: object) -> str:
    """The percent as the script reads it: exact here, rounded to 6 decimals there
    (update_progress-2.lua, the one place that rounds, for every caller)."""
    if value is None:
        return ""
    if type(value) is float and 0.0 <= value <= 100.0:  # the common case, checked cheaply
        return str(int(value)) if value.is_integer() else repr(value)
    # compared before any conversion: float(10**400) would raise OverflowError; NaN fails it
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidInput(f"progress_percent must be a number from 0 to 100, got {value!r}")
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


def step_arg(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"current_step must be a step name, got {value!r}")
    return value


def status_arg(value: object) -> str:
    if value is None:
        return ""
    try:
        return Status(value).value
    except ValueError:
        raise InvalidInput(
            f"status must be one of {', '.join(s.value for s in Status)}, got {value!r}"
        ) from None


def text_arg(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        value = value[: MAX_TEXT - 1] + "…"
    return "=" + value


def result_arg(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"result must be an object, got {type(value).__name__}")
    try:
        return "=" + json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"result must be JSON-serialisable: {exc}") from None
    except RecursionError:  # the script allows 64 levels (update_progress-2.lua)
        raise InvalidInput("result must nest at most 64 levels deep") from None


def lineage_args(attempt: object, retry_of: object, steps_done: object) -> list[str]:
    """create_job-2.lua's ARGV[17..19]: the job's attempt, the job it retries, its steps done."""
    whole(attempt, "attempt", MAX_ATTEMPT)
    if retry_of is not None:
        validate_id(retry_of, "retry_of")
    if attempt == 0 or (attempt == 1) != (retry_of is None):
        raise InvalidInput("a first attempt (1) retries no job; a later attempt names the job it retries "
                           f"(attempt {attempt}, retry_of {retry_of!r})")
    whole(steps_done, "steps_done", MAX_EXACT_INT)
    return [str(attempt), str(retry_of or ""), str(steps_done or "")]


def resume_args(steps_done: object, progress_percent: object, message: object) -> list[str]:
    """create_job-2.lua's ARGV[11..14] for a retry that resumes: pending, its bar at
    ``progress_percent`` (the share of its ``steps_done`` steps), ``message`` saying why; none
    of that for a job that starts from the beginning."""
    if not steps_done and not progress_percent and message is None:
        return []
    if progress_percent and not steps_done:
        raise InvalidInput("a new job starts at 0% unless steps_done > 0")
    return ["", progress_arg(progress_percent), "", "" if message is None else text_arg(message, "message")]
