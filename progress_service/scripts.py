"""Loads lua/*.lua once per client and maps their replies to Python results.

The scripts ship inside the wheel as ``progress_service/lua`` (see
pyproject's ``force-include``); in a source checkout they are read from the
repository's ``lua/`` folder. :func:`lua_dir` is the one place that decides.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import NamedTuple

import redis
from redis.exceptions import ResponseError

from .errors import InvalidInput

_HERE = Path(__file__).resolve().parent


@cache
def lua_dir() -> Path:
    for candidate in (_HERE / "lua", _HERE.parent / "lua"):
        if (candidate / "update_progress-2.lua").is_file():
            return candidate
    raise FileNotFoundError(f"the Lua scripts are missing: looked in {_HERE / 'lua'} and {_HERE.parent / 'lua'}")


@cache
def script_source(name: str) -> str:
    """The source of ``lua/<name>-<numkeys>.lua``."""
    matches = sorted(lua_dir().glob(f"{name}-*.lua"))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one lua/{name}-<numkeys>.lua, found {matches}")
    return matches[0].read_text(encoding="utf-8")


class UpdateResult(NamedTuple):
    """What ``ProgressStore.update`` answers (a named tuple: cheap on the hot path)."""

    accepted: bool
    reason: str  # ok | unchanged | regression | terminal | not_found
    seq: int
    status: str | None = None  # the job's status after an accepted update

    def __bool__(self) -> bool:
        return self.accepted


def as_text(value: object) -> str:
    """A reply value as text (a client without ``decode_responses`` answers bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_ACCEPTED = frozenset({"ok", "unchanged"})


def parse_update_reply(reply: bytes | str) -> UpdateResult:
    """``"<reason> <seq> [<status>]"`` as update_progress-2.lua returns it."""
    parts = as_text(reply).split(" ")
    reason = parts[0]
    return UpdateResult(reason in _ACCEPTED, reason, int(parts[1]), parts[2] if len(parts) > 2 else None)


def invalid_from(exc: ResponseError) -> InvalidInput | None:
    """The ``InvalidInput`` a script raised (``INVALID ...``), or None for any other error."""
    text = str(exc)
    marker = text.find("INVALID ")
    if marker < 0:
        return None
    detail = text[marker + len("INVALID "):]
    # Redis appends " script: <sha>, on @user_script:<line>." to script errors.
    cut = detail.find(" script: ")
    return InvalidInput(detail[:cut] if cut >= 0 else detail)


class Scripts:
    """The registered scripts of one client; redis-py reloads them on NOSCRIPT."""

    def __init__(self, client: redis.Redis | redis.RedisCluster) -> None:
        self.update = client.register_script(script_source("update_progress"))
        self.create = client.register_script(script_source("create_job"))
        self.heartbeat = client.register_script(script_source("heartbeat"))
        self.read = client.register_script(script_source("read_job"))
        self.read_for_mirror = client.register_script(script_source("read_for_mirror"))
        self.claim_mirror_due = client.register_script(script_source("claim_mirror_due"))
        self.expire_mirrored = client.register_script(script_source("expire_mirrored"))
        self.batch_percent = client.register_script(script_source("batch_percent"))
        self.read_members = client.register_script(script_source("read_members"))
        self.observe_durations = client.register_script(script_source("observe_durations"))
