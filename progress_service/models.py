"""Status, id validation and the snapshot: the public shapes (README; web/openapi.py for HTTP)."""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, TypeGuard

from .errors import InvalidInput

# The public id pattern is spelt with ``$``; in Python ``$`` also matches before a
# trailing newline ("abc\n"), so the compiled pattern ends in ``\Z``: its ``match``,
# ``fullmatch`` and ``search`` all refuse what the documented pattern refuses.
ID_RULE = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Lua's numbers are doubles: whole numbers are exact to 2**53, and Lua prints them with 14
# digits. (JavaScript's Number.MAX_SAFE_INTEGER is this one too.) Every whole number the
# scripts take is bounded: a seq starts above a floor of at most 10**12, so that it stays
# below 10**14 however many updates follow; times and counts below MAX_EXACT_INT.
MAX_EXACT_INT = 2**53 - 1
MAX_SEQ_FLOOR = 10**12
DEFAULT_STEPS = ("fetch-paper", "generate-script", "generate-audio", "generate-videos", "assemble-video")


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
# The same as the plain strings a snapshot, an event or a job hash holds: a str-valued
# Enum member does not hash like its value, so ``"failed" in TERMINAL`` is False.
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def is_valid_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an id the public pattern allows (a str matching ``ID_RULE``, to its very end)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def validate_id(value: object, what: str = "job_id") -> str:
    """Return ``value`` if it is a valid id, else raise ``InvalidInput`` (a ValueError)."""
    if not is_valid_id(value):
        shown = repr(value)
        if len(shown) > 80:  # an error echoes what was wrong, not 10 kB of it
            shown = f"{shown[:70]}... ({len(value) if isinstance(value, str) else len(shown)} characters)"
        raise InvalidInput(
            f"{what} must match {ID_RULE} (1-64 letters, digits, '.', '_', '-'), got {shown}"
        )
    return value


MAX_TAGS = 16
MAX_ATTEMPT = 999_999  # create_job-2.lua's bound


def validate_tags(tags: object) -> list[str]:
    """A list of at most ``MAX_TAGS`` distinct ids (the documented id pattern), in the order given."""
    if tags is None:
        return []
    if isinstance(tags, str | bytes) or not isinstance(tags, list | tuple):
        raise InvalidInput(f"tags must be a list of labels, got {tags!r}")
    out: list[str] = []
    for tag in tags:
        validate_id(tag, "tag")
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags, got {len(out)}")
    return out


def validate_steps(steps: object) -> list[str]:
    if isinstance(steps, str | bytes) or not hasattr(steps, "__iter__"):
        raise InvalidInput(f"steps must be a list of names, got {steps!r}")
    out = list(steps)
    if not out:
        raise InvalidInput("steps must name at least one step")
    for name in out:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput(f"every step must be a non-empty name of at most 200 characters, got {name!r}")
    if len(set(out)) != len(out):
        raise InvalidInput(f"step names must be unique, got {out!r}")
    return out


def iso_ms(ms: int | None) -> str | None:
    """Integer milliseconds since the epoch -> ISO-8601 UTC with milliseconds."""
    if ms is None:
        return None
    sec, milli = divmod(ms, 1000)
    t = time.gmtime(sec)  # half the cost of datetime + strftime: every snapshot formats five
    return f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}.{milli:03d}Z"


def ms_from_iso(iso: str | None) -> int | None:
    """The inverse of :func:`iso_ms`: an ISO-8601 time -> integer ms since the epoch (exact)."""
    if not iso:
        return None
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return calendar.timegm(dt.utctimetuple()) * 1000 + dt.microsecond // 1000


def entry_at_ms(fields: Mapping[str, str], entry_id: str | None = None) -> int:
    """When a history entry happened: its ``at`` field (create_job writes one), else its stream
    id's milliseconds (update_progress-2.lua's entries: the id is the server's clock)."""
    at = fields.get("at")
    if at:
        return int(at)
    if entry_id is None:
        raise ValueError("a history entry without `at` needs its stream id")
    return int(entry_id.partition("-")[0])


def history_entry(fields: Mapping[str, str], entry_id: str | None = None) -> dict[str, Any]:
    """One entry of a job's history stream (its fields, decoded, and its id) -> the documented
    history entry."""
    progress = float(fields.get("progress_percent") or 0)
    entry: dict[str, Any] = {
        "seq": int(fields["seq"]),
        "at": iso_ms(entry_at_ms(fields, entry_id)),
        "progress_percent": int(progress) if progress.is_integer() else progress,
        "current_step": fields.get("current_step") or None,
        "status": fields.get("status"),
    }
    if fields.get("message"):  # only a resumed retry's first entry has one: the steps it skips
        entry["message"] = fields["message"]
    return entry


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw else None


def _json_or_none(raw: str | None) -> Any:
    return json.loads(raw) if raw else None


def build_snapshot(
    fields: dict[str, str],
    now_ms: int,
    *,
    stale_after: float,
    pending_stale_after: float,
) -> dict[str, Any]:
    """Turn a job hash (decoded str -> str) into the documented snapshot.

    ``now_ms`` is the Redis server's clock. ``eta_seconds`` and ``eta_source`` are left
    None: the store fills them in (``progress_service.eta``), which needs more than the hash.
    """
    steps = json.loads(fields.get("steps") or "[]")
    done = int(fields.get("completed_count") or 0)
    status = fields.get("status") or Status.PENDING.value
    progress = float(fields.get("progress_percent") or 0)
    created = _int_or_none(fields.get("created_at_ms"))
    started = _int_or_none(fields.get("started_at_ms"))
    updated = _int_or_none(fields.get("progress_updated_at_ms"))
    finished = _int_or_none(fields.get("finished_at_ms"))
    heartbeat = _int_or_none(fields.get("heartbeat_at_ms"))
    snap: dict[str, Any] = {
        "job_id": fields.get("job_id"),
        "paper_id": fields.get("paper_id"),
        "pipeline": fields.get("pipeline"),
        "status": status,
        "progress_percent": int(progress) if progress.is_integer() else progress,
        "current_step": fields.get("current_step") or None,
        "steps": steps,
        "completed_steps": steps[:done],
        "total_steps": len(steps),
        "message": fields.get("message") or None,
        "error": fields.get("error") or None,
        "result": _json_or_none(fields.get("result")),
        "seq": int(fields.get("seq") or 0),
        "created_at": iso_ms(created),
        "started_at": iso_ms(started),
        "progress_updated_at": iso_ms(updated),
        "finished_at": iso_ms(finished),
        "heartbeat_at": iso_ms(heartbeat),
        "batch_id": fields.get("batch_id") or None,
        "tags": json.loads(fields.get("tags") or "[]"),
        "attempt": int(fields.get("attempt") or 1),  # a job made before retries existed: 1
        "retry_of": fields.get("retry_of") or None,
        "is_stale": is_stale(status, now_ms, created, started, updated, stale_after, pending_stale_after),
        "eta_seconds": None,
        "eta_source": None,
    }
    return snap


LINEAGE = ("batch_id", "tags", "attempt", "retry_of")  # what a job keeps when it is re-created


def lineage_of(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``snapshot`` that say where the job comes from (its batch, tags, attempt
    and the job it retries): what ``ProgressStore.restore_job`` takes to re-create it as it was."""
    return {"batch_id": snapshot.get("batch_id"), "tags": list(snapshot.get("tags") or ()),
            "attempt": int(snapshot.get("attempt") or 1), "retry_of": snapshot.get("retry_of")}


def is_stale(
    status: str,
    now_ms: int,
    created_ms: int | None,
    started_ms: int | None,
    updated_ms: int | None,
    stale_after: float,
    pending_stale_after: float,
) -> bool:
    """A running job with no progress for ``stale_after`` s, or a job pending too long."""
    if status == Status.RUNNING.value:
        last = max(x for x in (updated_ms, started_ms, created_ms, 0) if x is not None)
        return now_ms - last > stale_after * 1000
    if status == Status.PENDING.value:
        return created_ms is not None and now_ms - created_ms > pending_stale_after * 1000
    return False


def event_to_snapshot(previous: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Apply one pub/sub event payload to the last snapshot a subscriber holds."""
    snap = dict(previous)
    for name in ("seq", "status", "progress_percent", "current_step", "completed_steps", "message", "error"):
        if name in event:
            snap[name] = event[name]
    if "result" in event:
        snap["result"] = event["result"]
    if event.get("progress_updated_at_ms") is not None:
        snap["progress_updated_at"] = iso_ms(int(event["progress_updated_at_ms"]))
    for name in ("started_at", "finished_at"):
        ms = event.get(name + "_ms")
        if ms:
            snap[name] = iso_ms(int(ms))
    snap["is_stale"] = False
    if snap["status"] != Status.RUNNING.value:
        snap["eta_seconds"] = snap["eta_source"] = None
    return snap
