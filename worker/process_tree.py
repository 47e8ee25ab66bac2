"""Process trees: find every process a command started, and kill them all.

A job's command runs as the leader of a process group of its own
(``start_new_session``); its descendants usually stay in that group, but one may
leave it (``setsid``) or lose its parent link when its parent dies. So a kill
signals the group *and* every descendant found through ``/proc``, collected
before the first signal and again on every round, and checks by pid that none
is left. A process that double-forks away (``setsid`` and its parent exiting, as a
daemon does) keeps no link to the tree at all: given a ``tag`` (the job's
``PROGRESS_JOB_ID=<id>`` entry, which every process of the job inherits), the
kill also finds processes by that entry in their environment, wherever they went.
A zombie (dead, not yet reaped) counts as gone. Without ``/proc`` (macOS) only the
group is signalled and checked.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "KILL_GRACE", "ProcInfo", "descendants", "environ_has", "group_members", "kill_process_tree",
    "process_alive", "process_table", "start_time", "tagged_processes",
]

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def _have_proc() -> bool:
    return os.path.isdir("/proc/self")


class ProcInfo(NamedTuple):
    """One process as /proc/<pid>/stat shows it."""

    ppid: int
    pgid: int
    state: str  # "Z" (zombie) and "X" (dead) count as gone
    start: int  # start time in clock ticks since boot: with the pid, it names one process


def _stat(pid: int | str) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ... starttime": comm may hold spaces and parentheses.
    rest = raw[raw.rfind(b")") + 2:].split()
    if len(rest) < 20:
        return None
    return ProcInfo(int(rest[1]), int(rest[2]), rest[0].decode(), int(rest[19]))


def process_table() -> dict[int, ProcInfo] | None:
    """Every process, from /proc; None where there is no /proc."""
    if not _have_proc():
        return None
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table = {}
    for name in names:
        if name.isdigit() and (info := _stat(name)) is not None:
            table[int(name)] = info
    return table


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None (gone, or no /proc)."""
    info = _stat(pid) if pid > 0 and _have_proc() else None
    return info.start if info else None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone).

    With ``started`` (from :func:`start_time`), a new process that reuses the pid
    does not count either.
    """
    if pid <= 0:
        return False
    if _have_proc():
        info = _stat(pid)
        if info is None:
            return os.path.exists(f"/proc/{pid}") and _signal_alive(pid)  # unreadable, not gone
        return info.state not in ("Z", "X") and (started is None or info.start == started)
    return _signal_alive(pid)


def _signal_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    table = process_table()
    if table is None:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    return [pid for pid, p in table.items() if p.pgid == pgid and p.state not in ("Z", "X")]


def descendants(pid: int, table: dict[int, ProcInfo] | None = None) -> set[int]:
    """Live descendants of ``pid`` (children, their children, ...)."""
    table = process_table() if table is None else table
    if not table:
        return set()
    children: dict[int, list[int]] = {}
    for child, p in table.items():
        if p.state not in ("Z", "X"):
            children.setdefault(p.ppid, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def environ_has(pid: int, tag: str) -> bool:
    """Whether ``pid``'s environment holds the entry ``tag`` (``NAME=value``), exactly.

    False when it does not, is gone, or is not ours to read.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return tag.encode() in f.read().split(b"\0")
    except OSError:
        return False


def _ancestors(table: dict[int, ProcInfo]) -> set[int]:
    """This process and every process above it: never part of a tree we kill."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        info = table.get(pid)
        pid = info.ppid if info else 0
    return found


def tagged_processes(tag: str, table: dict[int, ProcInfo] | None = None) -> set[int]:
    """Live processes whose environment holds ``tag`` (``NAME=value``), this process
    and its ancestors excepted. Empty where there is no /proc."""
    table = process_table() if table is None else table
    if not table:
        return set()
    mine = _ancestors(table)
    return {pid for pid, p in table.items()
            if p.state not in ("Z", "X") and pid not in mine and environ_has(pid, tag)}


def _signal_tree(pgids: Iterable[int], pids: Iterable[int], sig: int) -> None:
    for pgid in {g for g in pgids if g > 1}:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in {p for p in pids if p > 1}:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_process_tree(
    pid: int,
    *,
    grace: float = KILL_GRACE,
    popen: subprocess.Popen | None = None,
    extra: Iterable[int] = (),
    tag: str | None = None,
) -> list[int]:
    """Kill ``pid``, its process group (``pid`` leads it) and every descendant found.

    SIGTERM first; whatever still lives after ``grace`` seconds gets SIGKILL.
    Descendants are collected before any signal (an orphan loses its parent link)
    and again on every round, so a process that forks while dying is caught too.
    With ``tag`` (``NAME=value``), processes holding that entry in their environment
    belong to the tree too (looked for at the start of each round and before
    declaring the tree gone: reading every environment is the slow part).
    Returns the pids still alive at the end: an empty list when all went.
    """
    known: set[int] = {pid, *extra}
    groups: set[int] = {pid}

    def refresh(by_tag: bool = False) -> list[int]:
        table = process_table()
        if table is not None:
            if by_tag and tag:
                known.update(tagged_processes(tag, table))
            for p in list(known):
                known.update(descendants(p, table))
            known.update(p for p, info in table.items() if info.pgid in groups and info.state not in ("Z", "X"))
            for p in known:
                if p in table:
                    groups.add(table[p].pgid)
        if popen is not None:
            popen.poll()  # reap our direct child, so it does not linger as a zombie
        return [p for p in known if process_alive(p)]

    own_group = os.getpgrp()
    groups.discard(own_group)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = refresh(by_tag=True)
        groups.discard(own_group)
        if not alive:
            return []
        _signal_tree(groups, [p for p in alive if p != os.getpid()], sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.02)
            alive = refresh()
            if not alive:
                alive = refresh(by_tag=True)  # one last look for strays before saying "gone"
            groups.discard(own_group)
            if not alive:
                return []
            if sig == signal.SIGKILL:  # new forks since the last round
                _signal_tree(groups, [p for p in alive if p != os.getpid()], sig)
    alive = refresh(by_tag=True)
    if alive:
        logger.error("process tree of pid %d: %s still alive after SIGKILL", pid, sorted(alive))
    return sorted(alive)
