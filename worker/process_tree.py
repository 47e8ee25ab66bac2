"""Process trees: find every process a command started, and kill them all.

A job's command runs as the leader of a process group of its own
(``start_new_session``); its descendants usually stay in that group, but one may
leave it (``setsid``) or lose its parent link when its parent dies. So a kill
signals the group *and* every descendant, collected before the first signal and
again on every round. A process that double-forks away (``setsid`` and its parent
exiting, as a daemon does) keeps no link to the tree at all: given a ``tag`` (the
run's ``PROGRESS_JOB_TAG=<prefix>:<job_id>:<token>`` entry, which every process of
the run inherits), the kill also finds processes by that exact entry in their
environment.

psutil does the looking. A ``psutil.Process`` names one process by its pid *and*
start time, and ``send_signal`` checks both first: a pid reused by a new process is
never signalled. A zombie (dead, not yet reaped) counts as gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress

import psutil

logger = logging.getLogger(__name__)

__all__ = ["KILL_GRACE", "descendants", "environ_has", "group_members", "kill_process_tree",
           "process_alive", "tagged_processes"]

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
POLL = 0.05  # seconds, at most, between two looks at a dying tree
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

# Every live process: its parent's pid and its process group.
_Table = dict[psutil.Process, tuple[int, int]]


def _live() -> _Table:
    table: _Table = {}
    for pid in psutil.pids():
        with suppress(psutil.Error, OSError):  # gone since it was listed
            process = psutil.Process(pid)
            with process.oneshot():
                if process.status() not in _GONE:
                    table[process] = (process.ppid(), os.getpgid(pid))
    return table


def process_alive(process: int | psutil.Process) -> bool:
    """Whether a process lives; a zombie counts as gone, and so does, for a
    ``psutil.Process``, a new process that reuses its pid."""
    try:
        if isinstance(process, int):
            if process <= 0:
                return False
            process = psutil.Process(process)
        return process.is_running() and process.status() not in _GONE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _below(pids: Iterable[int], table: _Table) -> set[psutil.Process]:
    children: dict[int, list[psutil.Process]] = {}
    for process, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(process)
    found: set[psutil.Process] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child.pid)
    return found


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (children, their children, ...)."""
    return {process.pid for process in _below([pid], _live())}


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    return [process.pid for process, (_, group) in _live().items() if group == pgid]


def environ_has(process: int | psutil.Process, tag: str) -> bool:
    """Whether a process's environment holds the entry ``tag`` (``NAME=value``), exactly.

    False when it does not, is gone, or is not ours to read.
    """
    name, _, value = tag.partition("=")
    try:
        process = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return process.environ().get(name) == value
    except (psutil.Error, ValueError):
        return False


def _tagged(tag: str, table: _Table) -> set[psutil.Process]:
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # never part of a job's tree
    return {process for process in table if process.pid not in mine and environ_has(process, tag)}


def tagged_processes(tag: str) -> set[int]:
    """Live processes whose environment holds ``tag`` (``NAME=value``), this process
    and its ancestors excepted."""
    return {process.pid for process in _tagged(tag, _live())}


def _signal(groups: Iterable[int], processes: Iterable[psutil.Process], sig: int) -> None:
    for pgid in groups:
        if pgid > 1:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
    for process in processes:
        if process.pid > 1:
            with suppress(psutil.Error):  # gone, or its pid reused: not signalled
                process.send_signal(sig)


def _wait(processes: list[psutil.Process], popen: subprocess.Popen | None) -> None:
    """Up to POLL seconds for ``processes`` to end. psutil reaps those that are our
    children, but ``popen``'s: its ``poll`` does, to keep the exit code."""
    others = [p for p in processes if popen is None or p.pid != popen.pid]
    if others:
        psutil.wait_procs(others, timeout=POLL)
    else:
        time.sleep(POLL)


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
    known: set[psutil.Process] = set()
    for p in {pid, *extra}:
        with suppress(psutil.Error, ValueError):
            known.add(psutil.Process(p))
    groups = {pid}

    def refresh(by_tag: bool = False) -> list[psutil.Process]:
        if popen is not None:
            popen.poll()  # reap our direct child, so it does not linger as a zombie
        table = _live()
        if by_tag and tag:
            known.update(_tagged(tag, table))
        known.update(_below([p.pid for p in known if p in table], table))  # `in`: pid and start
        known.update(p for p, (_, group) in table.items() if group in groups)
        groups.update(table[p][1] for p in known if p in table)
        groups.discard(os.getpgrp())
        return [p for p in known if p in table and p.pid != os.getpid()]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = refresh(by_tag=True)
        if not alive:
            return []
        _signal(groups, alive, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _wait(alive, popen)
            alive = refresh() or refresh(by_tag=True)  # one last look for strays before "gone"
            if not alive:
                return []
            if sig == signal.SIGKILL:  # new forks since the last round
                _signal(groups, alive, sig)
    left = sorted(p.pid for p in refresh(by_tag=True))
    if left:
        logger.error("process tree of pid %d: %s still alive after SIGKILL", pid, left)
    return left
