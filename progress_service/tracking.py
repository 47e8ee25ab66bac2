"""Reporting progress from any Python code: ``store.track(...)`` (README, "Reporting from anywhere").

    with store.track(job_id, paper_id="p1", steps=["a", "b"]) as job:
        job.step("a")
        job.progress(40, message="halfway")
        for item in job.tqdm(items, step="b"):   # a real tqdm bar; reports its share of step b
            ...

What it does:

* The caller's calls never talk to Redis. They change the job's state in memory
  (``TrackedJob``) and wake the tracker's thread, which does all the writing: it
  creates the job if it is missing, marks it ``running``, writes each change
  through ``progress_service.Throttle`` (a step change at once, percent-only
  changes at most every ``PROGRESS_MIN_INTERVAL`` seconds), and stamps a heartbeat
  every ``settings.heartbeat_interval`` seconds. So Redis that is slow, down or
  partitioned away never blocks and never raises in the caller's code. What does
  raise at once is a mistake of the caller's: a step not in ``steps``, a percent
  outside 0..100 (``InvalidInput``, a ``ValueError``).
* While Redis does not answer, the thread keeps the latest state (later changes
  merge into it) and tries again every 0.1 s, doubling to 2 s; the first answer
  writes it. A job the store lost meanwhile (Redis restarted empty) is re-created
  at the state it had, its ``seq`` going on above the last one seen.
* Percent is overall, 0..100, and never goes back: a lower value, or a step before
  the current one, is ignored here (the store would refuse it as a regression).
  The steps share the bar equally, or by ``weights``. ``job.tqdm(items, step=s)``
  enters step ``s`` and reports ``start(s) + share(s) x n / total`` as it goes.
  Until the block ends the percent stays at most 99.9: 100% completes a job.
* Leaving the block writes the final state at once: ``completed`` (with
  ``job.result``, if set); an exception: ``failed`` with the exception's text
  (``"ValueError: boom"``), and the exception goes on; ``KeyboardInterrupt``:
  ``canceled``. A job that ends outside the block (a cancel from the API, a
  sweeper's ``worker lost``) is left as it is: ``job.ended_elsewhere`` turns true,
  for the block to stop early if it wants.

When the final state lands: ``__exit__`` waits up to ``timeout`` seconds (default
5) for it to be written. If Redis is still away then, ``__exit__`` returns anyway
(a warning says so) and the tracker's thread keeps trying, for up to
``PROGRESS_WORKER_LOST_AFTER`` seconds after the block ended (at least ``timeout``);
``job.wait()`` waits for it, and so does a script that ends meanwhile (an ``atexit``
hook, registered only then, waits out the same bound: a daemon thread stuck on a
partitioned socket cannot hold the interpreter longer). Entering the block also
waits up to ``timeout`` for the job to be created and marked ``running``, so that
readers see it so when the block's code starts (in async code, ``timeout=0`` never
blocks the event loop).
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from .errors import InvalidInput, JobConflict, JobNotFound
from .models import TERMINAL_VALUES, Status, lineage_of, validate_id, validate_steps
from .scripts import UpdateResult
from .throttle import Throttle

if TYPE_CHECKING:
    from .store import ProgressStore

logger = logging.getLogger(__name__)

TRACKED_PIPELINE = "tracked"  # the pipeline name of a job no worker runs
PERCENT_CAP = 99.9  # the most a tracked job shows before its block ends (100% completes it)
RETRY_FIRST, RETRY_MAX = 0.1, 2.0  # seconds between two tries while Redis does not answer
DEFAULT_TIMEOUT = 5.0
_SOFT = frozenset({"progress_percent", "message"})  # changes that merge into one another
_RESTORED = ("progress_percent", "current_step", "message")  # what a lost job is re-created with


class TrackOptions(TypedDict, total=False):
    """``store.track``'s keyword arguments."""

    pipeline: str  # the job's pipeline name, when the block creates it (default "tracked")
    weights: Sequence[float] | None  # each step's share of the bar (default: equal)
    timeout: float  # seconds entering and leaving the block wait for Redis (default 5)


class TrackedJob:
    """One job reported on from the caller's code; made by :meth:`ProgressStore.track`."""

    def __init__(
        self,
        store: ProgressStore,
        job_id: str,
        paper_id: str,
        steps: Iterable[str],
        **options: Unpack[TrackOptions],
    ) -> None:
        self.store = store
        self.job_id = validate_id(job_id, "job_id")
        self.paper_id = validate_id(paper_id, "paper_id")
        self.pipeline = validate_id(options.get("pipeline", TRACKED_PIPELINE), "pipeline")
        timeout = options.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise InvalidInput(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.steps: tuple[str, ...] = ()
        self._starts: list[float] = []
        self._shares: list[float] = []
        self._lay_out(validate_steps(steps), options.get("weights"))
        self.result: dict[str, Any] | None = None  # written with ``completed`` when the block ends
        self.last_result: UpdateResult | None = None  # the store's last answer to a write
        # True once the job has ended outside the block (canceled, or failed as worker lost):
        # nothing more is written but the final state (which the store then refuses), and
        # the block may stop early.
        self.ended_elsewhere = False
        self._cond = threading.Condition()
        self._changes: deque[dict[str, Any]] = deque()  # offered, not yet given to the throttle
        self._final: dict[str, Any] | None = None
        self._give_up_at = math.inf  # when the thread stops trying to write the final state
        self._percent = 0.0
        self._step = -1  # index of the current step
        self._retry_at = 0.0
        self._written = threading.Event()  # the final state is in the store (or was refused)
        self._created = threading.Event()  # the job exists (created now, or before)
        self._started = threading.Event()  # the first changes (``running``) are written
        self._lost = False  # a write found no job: the store lost it
        self._write_failed = False  # the last write failed; its fields wait in the throttle
        self._last_seq = 0
        self._state: dict[str, Any] = {}  # the progress fields the store last accepted
        self._lineage: dict[str, Any] = {}  # an existing job's batch, tags, attempt: kept if re-created
        self._thread: threading.Thread | None = None

    # -- the caller's side --------------------------------------------------

    def __enter__(self) -> TrackedJob:
        if self._thread is not None:
            raise RuntimeError(f"job {self.job_id} is tracked already")
        self._offer({"status": Status.RUNNING.value})
        self._thread = threading.Thread(target=self._run, name=f"track-{self.job_id}", daemon=True)
        self._thread.start()
        self._started.wait(self.timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            final: dict[str, Any] = {"status": Status.COMPLETED.value, "result": self.result}
        elif isinstance(exc, KeyboardInterrupt):
            final = {"status": Status.CANCELED.value, "message": "interrupted (KeyboardInterrupt)"}
        else:
            final = {"status": Status.FAILED.value, "error": exception_text(exc)}
        with self._cond:
            self._final = final
            self._give_up_at = time.monotonic() + max(self.timeout,
                                                      self.store.settings.worker_lost_after)
            self._retry_at = 0.0  # try at once, even while backing off
            self._cond.notify()
        if self._written.wait(self.timeout):
            return
        logger.warning("job %s: Redis did not answer within %g s; the final state (%s) "
                       "is written as soon as it does", self.job_id, self.timeout, final["status"])
        with self._cond:
            if not self._written.is_set():
                atexit.register(self._wait_at_exit)

    def _wait_at_exit(self) -> None:
        if not self._written.wait(max(0.0, self._give_up_at - time.monotonic())):
            logger.error("job %s: the final state %r is not written: Redis did not answer "
                         "before the process ended", self.job_id, self._final)

    def step(self, name: str, message: str | None = None) -> None:
        """Step ``name`` starts (the steps before it are done). A step before the current one
        is ignored; one not in ``steps`` is an ``InvalidInput``."""
        index = self._index_of(name)
        with self._cond:
            if index < self._step:
                logger.debug("job %s: step %r is before the current one: ignored", self.job_id, name)
                index = self._step
            fields = self._enter_locked(index)
            if message is not None:
                fields["message"] = _message(message)
            self._offer_locked(fields)

    def progress(self, percent: float | None = None, message: str | None = None) -> None:
        """Overall ``percent`` (0..100; a lower one than shown is ignored) and/or a ``message``."""
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)
                                    or not 0 <= percent <= 100):
            raise InvalidInput(f"progress_percent must be a number from 0 to 100, got {percent!r}")
        with self._cond:
            fields: dict[str, Any] = {}
            if percent is not None and self._raise_to(percent):
                fields["progress_percent"] = self._percent
            if message is not None:
                fields["message"] = _message(message)
            self._offer_locked(fields)

    def tqdm(self, iterable: Iterable[Any] | None = None, step: str | None = None,
             **kwargs: Any) -> Any:
        """A ``tqdm.tqdm`` bar (drawn as usual) that reports its share of ``step``: the
        current step when None (the first one before any). Giving a step enters it. Takes
        tqdm's own arguments (``total``, ``desc``, ...); without a ``total`` (and no
        ``len()``) it draws but reports nothing."""
        from .tracked_tqdm import TrackedTqdm  # tqdm is imported here, on first use

        if step is None:
            with self._cond:
                index = max(self._step, 0)
        else:
            index = self._index_of(step)
        self.step(self.steps[index])
        return TrackedTqdm(iterable, job=self, step_index=index, **kwargs)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the final state is written (or refused by the store); True if it is."""
        return self._written.wait(timeout)

    # -- what the bar calls -----------------------------------------------

    def advance_in_step(self, index: int, fraction: float) -> None:
        """Step ``index`` is ``fraction`` (0..1) done: its share of the bar, never going back."""
        if not 0.0 <= fraction:  # NaN too
            return
        with self._cond:
            if index != self._step:
                return  # a bar of a step that is over (or not yet begun): its share moves nothing
            target = self._starts[index] + self._shares[index] * min(fraction, 1.0)
            if self._raise_to(target):
                self._offer_locked({"progress_percent": self._percent})

    # -- internals, the caller's side ---------------------------------------

    def _lay_out(self, steps: list[str], weights: Sequence[float] | None) -> None:
        """Each step's start and share of 100: equal, or by ``weights``."""
        if weights is None:
            weights = [1.0] * len(steps)
        numbers = list(weights)
        if len(numbers) != len(steps) or any(
                isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0
                for w in numbers) or sum(numbers) <= 0:
            raise InvalidInput(f"weights must be one number >= 0 per step (not all 0), got {weights!r}")
        total = float(sum(numbers))
        self.steps = tuple(steps)
        self._shares = [w * 100.0 / total for w in numbers]
        self._starts = [sum(self._shares[:i]) for i in range(len(steps))]

    def _index_of(self, name: str) -> int:
        try:
            return self.steps.index(name)
        except ValueError:
            raise InvalidInput(f"step {name!r} is not one of {', '.join(self.steps)}") from None

    def _enter_locked(self, index: int) -> dict[str, Any]:
        if index <= self._step:
            return {}
        self._step = index
        fields: dict[str, Any] = {"current_step": self.steps[index]}
        if self._raise_to(self._starts[index]):
            fields["progress_percent"] = self._percent
        return fields

    def _raise_to(self, percent: float) -> bool:
        percent = round(min(float(percent), PERCENT_CAP), 6)
        if percent <= self._percent:
            return False
        self._percent = percent
        return True

    def _offer(self, fields: dict[str, Any]) -> None:
        with self._cond:
            self._offer_locked(fields)

    def _offer_locked(self, fields: dict[str, Any]) -> None:
        """Queue a change for the thread; percent and message changes merge with the last one."""
        if not fields:
            return
        if self._final is not None or self.ended_elsewhere:
            logger.debug("job %s: a change after the job ended is ignored: %r", self.job_id, fields)
            return
        if self._changes and fields.keys() <= _SOFT and self._changes[-1].keys() <= _SOFT:
            self._changes[-1].update(fields)
        else:
            self._changes.append(fields)
        self._cond.notify()

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        """Create, write, heartbeat, retry; until the final state is written or given up."""
        settings = self.store.settings
        throttle = Throttle(self._write, settings.min_interval)
        beat_every = settings.heartbeat_interval
        next_beat = time.monotonic() + beat_every
        delay = RETRY_FIRST
        failing = False
        while True:
            with self._cond:
                while True:
                    if failing:
                        wake_at = self._retry_at
                    elif self._changes or self._final is not None or self._write_failed:
                        break
                    else:
                        wake_at = next_beat
                    now = time.monotonic()
                    if now >= wake_at:
                        break
                    self._cond.wait(wake_at - now)
                final, give_up_at = self._final, self._give_up_at
            try:
                self._ensure_job()
                if self._write_failed:
                    self._write_failed = False  # set again if this write fails too
                    throttle.flush()  # what a failed write kept, first
                self._write_changes(throttle)
                self._started.set()
                if final is not None:
                    throttle.update(**final)  # urgent: written at once, with what is pending
                    throttle.close()
                    self._stop()
                    return
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + beat_every
                    alive = self.ended_elsewhere or self.store.heartbeat(self.job_id)
                    if not alive and self._created.is_set():
                        self._lost = True  # missing (re-created now), or finished (left so)
                        self._ensure_job()
            except Exception as exc:
                if time.monotonic() >= give_up_at:
                    logger.error("job %s: the final state %r is not written, Redis did not answer: %s",
                                 self.job_id, final, exc)
                    throttle.cancel()
                    self._stop()  # nothing more will happen: keep no one waiting
                    return
                if not failing:
                    logger.warning("job %s: progress not written (%s); keeping the latest state "
                                   "and trying again", self.job_id, exc)
                    failing = True
                with self._cond:
                    # the block ended while this try ran: its final state is tried at once
                    ended_meanwhile = final is None and self._final is not None
                    self._retry_at = 0.0 if ended_meanwhile else time.monotonic() + delay
                delay = min(delay * 2, RETRY_MAX)
                continue
            if failing:
                logger.info("job %s: Redis answers again; the latest state is written", self.job_id)
                failing, delay = False, RETRY_FIRST

    def _stop(self) -> None:
        self._written.set()
        with self._cond:
            atexit.unregister(self._wait_at_exit)

    def _write_changes(self, throttle: Throttle) -> None:
        """Give every queued change to the throttle (which writes or merges it), oldest first.
        A failed write raises, its fields kept in the throttle; the rest stay queued."""
        while True:
            with self._cond:
                if not self._changes:
                    return
                fields = self._changes.popleft()
            throttle.update(**fields)

    def _ensure_job(self) -> None:
        """Create the job, or re-create the one the store lost, before any write."""
        if self._created.is_set() and not self._lost:
            return
        store = self.store
        try:
            if self._lost:
                store.restore_job(self.job_id, self.paper_id, self.steps, self.pipeline,
                                  seq_floor=self._last_seq, status=Status.RUNNING.value,
                                  **self._state, **self._lineage)
                logger.warning("job %s: the store lost the job; re-created it at seq > %d",
                               self.job_id, self._last_seq)
            else:
                store.create_job(self.job_id, self.paper_id, steps=self.steps, pipeline=self.pipeline)
        except JobConflict:
            self._join_existing()
        self._lost = False
        self._created.set()

    def _join_existing(self) -> None:
        """The job existed already: its steps in the store win over the ones given here."""
        snap = self.store.get(self.job_id)
        if snap is None:
            return
        self._lineage = lineage_of(snap)
        if snap["status"] in TERMINAL_VALUES:
            self._ended(snap["status"])
        if tuple(snap["steps"]) == self.steps:
            return
        logger.warning("job %s: exists with steps %s, not %s: tracking its own steps",
                       self.job_id, snap["steps"], list(self.steps))
        with self._cond:
            self._lay_out(list(snap["steps"]), None)
            self._step = min(self._step, len(self.steps) - 1)

    def _write(self, fields: dict[str, Any]) -> UpdateResult | None:
        """The throttle's writer: one store update, from this job's thread or the throttle's
        timer. A write that fails wakes the thread, which tries again."""
        try:
            result = self.store.update(self.job_id, **fields)
            if result.reason == "not_found":
                self._lost = True
                raise JobNotFound(f"job {self.job_id} is not in the store")
        except InvalidInput as exc:  # trying again cannot help: dropped, and said so
            logger.error("job %s: the store refused %r: %s", self.job_id, fields, exc)
            return None
        except Exception:
            with self._cond:
                self._write_failed = True
                self._cond.notify()
            raise  # the throttle keeps the fields for the next try
        self._write_failed = False
        self.last_result = result
        self._last_seq = max(self._last_seq, result.seq)
        if result.accepted:
            self._state.update((k, v) for k, v in fields.items() if k in _RESTORED and v is not None)
        elif result.reason == "terminal":
            self._ended(result.status)
        return result

    def _ended(self, status: str | None) -> None:
        if not self.ended_elsewhere:
            self.ended_elsewhere = True
            logger.info("job %s: ended outside the block (%s); its progress is no longer written",
                        self.job_id, status or "finished")


def exception_text(exc: BaseException) -> str:
    """An exception as Python's last traceback line shows it: ``ValueError: boom``."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() or type(exc).__name__


def _message(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"message must be a string, got {type(value).__name__}")
    return value

