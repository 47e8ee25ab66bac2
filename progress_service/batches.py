"""A batch: the jobs of many papers submitted together, and its snapshot (README, "Batches and tags").

How the snapshot stays consistent, on one Redis and on a Redis Cluster
----------------------------------------------------------------------
A batch's counts are computed when it is read, from its members' own hashes,
and nothing is written on a member's update path: the update script and its
cost are the same for a member as for a lone job (bench/batch_bench.py).

* Every member is read with one ``HMGET`` of its hash, which is atomic: it is
  in exactly one state, so the counts always sum to ``total`` and no member is
  counted twice or in no state. On one Redis the reads are one script call
  (``lua/read_members-n.lua``), so the whole snapshot is one instant; on a cluster, where the batch's hash and its
  members' hashes sit in different slots (``<prefix>:batch:{<batch_id>}`` and
  ``<prefix>:{<job_id>}``), they go in one pipeline that redis-py splits per
  node: each member is still read atomically, the batch as a whole a few
  hundred microseconds apart, which a member's own rules make safe.
* ``progress_percent`` is the mean of the members' percents. A member's percent
  never falls (update rule 3) and a member that finished keeps its final one,
  so a later read never computes less than an earlier one finished with. A
  forced update, a member lost with an empty Redis or two readers that overlap
  could still compute less: every reader therefore raises a high-water mark on
  the batch's hash (``lua/batch_percent-1.lua``, one key, so one slot) and shows
  the mark. No reader shows a lower percent than one shown before.
* The status follows from the counts (below), ``finished_at`` is the latest
  member's ``finished_at``: both are functions of the members, the same for
  every reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInput
from .eta import JobState, batch_eta, rate_eta
from .models import Status, iso_ms, ms_from_iso, validate_id, validate_tags
from .step_stats import StepStats

MAX_MEMBERS = 1000
MAX_NAME = 200
COUNTED = tuple(s.value for s in Status)  # pending, running, completed, failed, canceled
_UNFINISHED = frozenset({Status.PENDING.value, Status.RUNNING.value})


def validate_batch(paper_ids: object, pipeline: object, tags: object, name: object
                   ) -> tuple[list[str], str, list[str], str | None]:
    """The checked request of a batch, before anything is written (all or nothing)."""
    if not isinstance(paper_ids, list | tuple) or not 1 <= len(paper_ids) <= MAX_MEMBERS:
        shown = len(paper_ids) if isinstance(paper_ids, list | tuple) else repr(paper_ids)[:40]
        raise InvalidInput(f"paper_ids must be a list of 1 to {MAX_MEMBERS} paper ids, got {shown}")
    for index, paper_id in enumerate(paper_ids):
        try:
            validate_id(paper_id, "paper_id")
        except InvalidInput as exc:
            raise InvalidInput(f"paper_ids[{index}]: {exc}") from None
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME):
        raise InvalidInput(f"name must be a non-empty string of at most {MAX_NAME} characters, got {name!r}")
    return list(paper_ids), validate_id(pipeline, "pipeline"), validate_tags(tags), name


def batch_status(counts: Mapping[str, int], canceled: bool) -> str:
    """The documented batch status from its members' counts and whether it was canceled.

    Running (pending while no member has started) while any member is unfinished;
    then canceled if it was canceled, failed if any member failed, canceled if any
    member was canceled on its own, else completed.
    """
    if counts[Status.PENDING.value] + counts[Status.RUNNING.value]:
        if counts[Status.PENDING.value] == counts["total"]:
            return Status.PENDING.value
        return Status.RUNNING.value
    if canceled:  # its cancel has reached every member
        return Status.CANCELED.value
    if counts[Status.FAILED.value]:
        return Status.FAILED.value
    if counts[Status.CANCELED.value]:
        return Status.CANCELED.value
    return Status.COMPLETED.value


def build_batch_snapshot(fields: Mapping[str, str], members: Sequence[Mapping[str, Any] | None],
                         now_ms: int, stats: StepStats | None = None) -> dict[str, Any]:
    """The batch snapshot from its hash and one entry per member, in submit order.

    A member entry holds ``status``, ``progress_percent``, ``started_at_ms`` and
    ``finished_at_ms`` (and, for the ETA, ``current_step``, ``completed_count`` and
    ``step_started_ms``); None is a member neither Redis nor PostgreSQL holds (a job
    an empty Redis lost, until its runner re-creates it): it counts as pending at 0 %.
    ``progress_percent`` is the mean computed now; the store raises the batch's
    high-water mark with it and shows the mark. ``eta_seconds`` follows from the members'
    (``eta.batch_eta``, with the pipeline's ``stats``), else from the batch's rate so far.
    """
    counts = dict.fromkeys(COUNTED, 0)
    total_percent = 0.0
    started: list[int] = []
    finished: list[int] = []
    running: list[JobState] = []
    for member in members:
        status = Status.PENDING.value if member is None else str(member["status"])
        counts[status if status in counts else Status.PENDING.value] += 1
        if member is None:
            continue
        total_percent += float(member.get("progress_percent") or 0)
        if member.get("started_at_ms"):
            started.append(int(member["started_at_ms"]))
        if member.get("finished_at_ms"):
            finished.append(int(member["finished_at_ms"]))
        if status == Status.RUNNING.value and stats is not None:
            running.append(_member_state(member, stats))
    total = len(members)
    counts["total"] = total
    canceled = fields.get("canceled") == "1"
    status = batch_status(counts, canceled)
    percent = round(total_percent / total, 6) if total else 0.0
    done = not (counts[Status.PENDING.value] + counts[Status.RUNNING.value])
    eta = None
    if status == Status.RUNNING.value:
        eta = batch_eta(running, counts[Status.PENDING.value], now_ms, stats)
        if eta is None and started:
            eta = rate_eta(status, percent, now_ms, [(min(started), 0.0)])
    return {
        "batch_id": fields.get("batch_id"),
        "name": fields.get("name") or None,
        "pipeline": fields.get("pipeline"),
        "tags": json.loads(fields.get("tags") or "[]"),
        "job_ids": json.loads(fields.get("job_ids") or "[]"),
        "total": total,
        **{name: counts[name] for name in COUNTED},
        "progress_percent": int(percent) if percent.is_integer() else percent,
        "status": status,
        "created_at": iso_ms(int(fields["created_at_ms"])) if fields.get("created_at_ms") else None,
        "finished_at": iso_ms(max(finished)) if done and finished else None,
        "eta_seconds": eta,
    }


def _member_state(member: Mapping[str, Any], stats: StepStats) -> JobState:
    started = member.get("step_started_ms")
    return JobState(Status.RUNNING.value, float(member.get("progress_percent") or 0), stats.steps,
                    member.get("current_step") or None, int(member.get("completed_count") or 0),
                    int(started) if started else None)


def member_entry(snapshot: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a batch's snapshot needs of a member, from the member's snapshot (PostgreSQL's copy
    of one Redis has let go), or None."""
    if snapshot is None:
        return None
    return {"status": snapshot["status"], "progress_percent": snapshot["progress_percent"],
            "started_at_ms": ms_from_iso(snapshot.get("started_at")),
            "finished_at_ms": ms_from_iso(snapshot.get("finished_at"))}


def is_finished(snapshot: Mapping[str, Any]) -> bool:
    """Whether no member of the batch is still pending or running."""
    return not (snapshot[Status.PENDING.value] + snapshot[Status.RUNNING.value])


def unfinished_members(job_ids: Sequence[str], members: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """The ids of the members not yet finished (what a batch's cancel cancels)."""
    return [j for j, m in zip(job_ids, members, strict=True)
            if m is not None and m["status"] in _UNFINISHED]


# -- the batch's event log ----------------------------------------------------------
#
# The batch's events are its members' history entries (each a change of one member,
# with the Redis time ``at`` it was made) in one order every reader agrees on: by
# ``at``, then by the member's place in the batch. Several changes of one member in
# one millisecond are one event (its state at the end of that millisecond). After the
# members' events of a millisecond comes one ``batch`` event, the batch as it stood
# then. An event's id is ``at * ID_STRIDE + place`` (the batch's: ``+ BATCH_PLACE``):
# increasing, exact in a double (and in JavaScript) for any date before year 2255.
# A stream only sends the events of milliseconds that are over on every node it read
# (``ProgressStore.member_histories``), so none can come in later before one it sent:
# a client that resumes from any id gets exactly the events an unbroken one got.

ID_STRIDE = MAX_MEMBERS + 1
BATCH_PLACE = MAX_MEMBERS


def event_id(at_ms: int, place: int) -> int:
    return at_ms * ID_STRIDE + place


class BatchFeed:
    """The batch's event log from its members' histories, from one id on.

        feed = BatchFeed(fields, histories, after=last_event_id)   # state as of that id
        for event_id, kind, data in feed.advance(histories, upto_ms): ...

    ``histories``: per member (in submit order) its history entries, oldest first,
    each with ``seq``, ``at_ms``, ``status``, ``progress_percent``, ``current_step``.
    """

    def __init__(self, fields: Mapping[str, str], histories: Sequence[Sequence[Mapping[str, Any]]],
                 after: int) -> None:
        self.fields = fields
        self.job_ids: list[str] = json.loads(fields.get("job_ids") or "[]")
        self.cursor = after
        self.states: list[dict[str, Any] | None] = [None] * len(self.job_ids)
        for place, entries in enumerate(histories):
            for entry in entries:
                if event_id(int(entry["at_ms"]), place) <= after:
                    self._apply(place, entry)

    def _apply(self, place: int, entry: Mapping[str, Any]) -> None:
        state = self.states[place]
        if state is not None and int(entry["seq"]) <= state["seq"]:
            return
        status = str(entry["status"])
        self.states[place] = {
            "seq": int(entry["seq"]), "status": status,
            "progress_percent": entry["progress_percent"], "current_step": entry["current_step"],
            "at_ms": int(entry["at_ms"]),
            "started_at_ms": (state or {}).get("started_at_ms") or (
                int(entry["at_ms"]) if status != Status.PENDING.value else None),
            "finished_at_ms": int(entry["at_ms"]) if status not in _UNFINISHED else None,
        }

    def snapshot(self, at_ms: int) -> dict[str, Any]:
        """The batch as the log has it (no ETA: the log is the same for every reader)."""
        snap = build_batch_snapshot(self.fields, self.states, at_ms)
        snap["eta_seconds"] = None
        return snap

    def member_event(self, place: int) -> dict[str, Any]:
        state = self.states[place]
        assert state is not None
        return {"job_id": self.job_ids[place], "seq": state["seq"], "status": state["status"],
                "progress_percent": state["progress_percent"], "current_step": state["current_step"],
                "progress_updated_at": iso_ms(state["at_ms"])}

    def finished(self) -> bool:
        return all(s is not None and s["status"] not in _UNFINISHED for s in self.states)

    def advance(self, histories: Sequence[Sequence[Mapping[str, Any]]], upto_ms: int
                ) -> list[tuple[int, str, dict[str, Any]]]:
        """The events after the cursor made up to ``upto_ms`` (inclusive), in order."""
        last: dict[tuple[int, int], Mapping[str, Any]] = {}
        for place, entries in enumerate(histories):
            for entry in entries:
                at = int(entry["at_ms"])
                if at <= upto_ms and event_id(at, place) > self.cursor:
                    key = (at, place)
                    if key not in last or int(entry["seq"]) > int(last[key]["seq"]):
                        last[key] = entry
        by_ms: dict[int, list[int]] = {}
        for at, place in sorted(last):
            by_ms.setdefault(at, []).append(place)
        owed = self.cursor // ID_STRIDE  # a resume within a millisecond still owes its batch event
        if self.cursor >= ID_STRIDE and self.cursor % ID_STRIDE != BATCH_PLACE and owed <= upto_ms:
            by_ms.setdefault(owed, [])
        out: list[tuple[int, str, dict[str, Any]]] = []
        for at in sorted(by_ms):
            for place in by_ms[at]:
                self._apply(place, last[(at, place)])
                self.cursor = event_id(at, place)
                out.append((self.cursor, "progress", self.member_event(place)))
            self.cursor = event_id(at, BATCH_PLACE)
            out.append((self.cursor, "batch", self.snapshot(at)))
        return out
