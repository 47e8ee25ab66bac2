"""Read a pipeline's output: README's "What a pipeline prints", as pure code.

Nothing here does I/O or talks to Redis; the runner feeds bytes in and writes what comes
out. Three pieces, used in this order:

``LineSplitter``
    raw bytes of a child's stdout or stderr -> text lines. Splits on ``\\n``, ``\\r\\n``
    and a bare ``\\r`` (tqdm redraws its bar with ``\\r``), keeps a partial line across
    reads, decodes invalid UTF-8 with U+FFFD, and keeps at most ``max_line_bytes`` of
    one line (the rest of an over-long line is consumed and dropped).

``parse_line(line) -> ParsedLine | None``
    one line -> what it says. ``None``: ordinary output, not meant for us. A
    ``ParsedLine`` of kind ``IGNORED`` names why a line that looked like ours was
    refused (``PROGRESS banana``, ``PROGRESS 150``, JSON with wrong types), so the
    caller can log ``ignored line: <reason>``. It never raises on a ``str``.

    ==========================  =================================================
    ``STEP <name>``             a step starts; earlier steps are done
    ``STEP <i>/<n> [<name>]``   the same, with its 1-based position
    ``PROGRESS <pct> [msg]``    overall percent, 0..100, fractions allowed
    ``{"step": ..., "progress": ..., "message": ...}``
                                any of the three; ``progress`` is overall percent.
                                ``"result": {...}`` is read too (the pipeline's
                                result, see worker.pipelines.video)
    ``desc:  42%|###  | 42/100 [...]``
                                a tqdm bar: progress *within* the current step,
                                a fraction 0..1 (from n/total when shown, else %)
    ==========================  =================================================

``ProgressTracker(steps, weights=None)``
    folds parsed lines into one overall percent that never goes backwards. Each step
    owns a share of 100 (``weights``, normalised; equal by default). Overall percent =
    the shares of the completed steps + the current step's share x its fraction.
    ``feed(parsed)`` returns a ``TrackerUpdate`` when something a user would see
    changed, else ``None`` (then ``last_ignored_reason`` says why, if it refused).

    * ``PROGRESS`` below the current percent, a bar that restarts lower, a step
      earlier than the current one: ignored.
    * A step name not in ``steps``: ignored (the store would reject it) -- unless the
      line is ``STEP i/n name`` and ``n`` equals the number of steps: then the index
      is trusted and the step is ``steps[i-1]``, so a pipeline may print display
      names (``STEP 3/5 Generating audio``).
    * A bar before any ``STEP`` line belongs to the first step.
    * A bar never carries a step to the next step's start (its fraction is capped at
      0.999), and nothing reports more than ``cap`` (99.9) until ``finish()``: 100%
      completes a job in the store, and only the runner knows the process succeeded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

__all__ = [
    "LineKind",
    "LineSplitter",
    "ParsedLine",
    "ProgressTracker",
    "TrackerUpdate",
    "parse_line",
]

MAX_MESSAGE_CHARS = 500
MAX_JSON_CHARS = 64 * 1024
IN_STEP_CAP = 0.999


class LineKind(str, Enum):
    STEP = "step"
    PROGRESS = "progress"
    JSON = "json"
    BAR = "bar"
    IGNORED = "ignored"


class ParsedLine(NamedTuple):
    """What one line says. Fields a line does not set are None."""

    kind: LineKind
    step: str | None = None  # a step name
    step_index: int | None = None  # 1-based, from STEP i/n
    step_total: int | None = None  # n, from STEP i/n
    percent: float | None = None  # overall percent, 0..100
    fraction: float | None = None  # within the current step, 0..1 (bars)
    message: str | None = None
    result: dict | None = None  # {"result": {...}} JSON lines
    reason: str | None = None  # why an IGNORED line was refused


class TrackerUpdate(NamedTuple):
    progress_percent: float
    current_step: str | None
    message: str | None


# Aliases: attribute access on an Enum class costs, and parse_line runs per line.
_STEP, _PROGRESS, _JSON, _BAR, _IGNORED = (
    LineKind.STEP,
    LineKind.PROGRESS,
    LineKind.JSON,
    LineKind.BAR,
    LineKind.IGNORED,
)

_STEP_RE = re.compile(r"STEP(?:\s+(\d{1,6})\s*/\s*(\d{1,6}))?(?:\s+(.+))?\Z", re.DOTALL)
_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,20}(?:\.\d*)?|\.\d+)%?")
# tqdm's l_bar ends "NN%|", the bar sits between two '|', r_bar starts " n/total [".
_BAR_RE = re.compile(
    r"(\d{1,3})%\|[^|\r\n]*\|\s*"
    r"(?:(\d+(?:\.\d+)?)([kMGTPEZY]?)/(\d+(?:\.\d+)?)([kMGTPEZY]?)(?![\w.]))?"
)
_SCALE = {
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Z": 1e21,
    "Y": 1e24,
}
_OUR_JSON_KEYS = ("step", "progress", "message", "result")


def _ignored(reason: str) -> ParsedLine:
    return ParsedLine(_IGNORED, reason=reason)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def parse_line(line: str) -> ParsedLine | None:
    """What one line of pipeline output says (see the module docstring)."""
    if not isinstance(line, str):
        raise TypeError(f"parse_line takes a str, not {type(line).__name__}")
    try:
        return _parse(line)
    except Exception as exc:  # the promise is "never raises on a str": a last net
        return _ignored(f"unparseable line ({type(exc).__name__})")


def _parse(line: str) -> ParsedLine | None:
    if not line:
        return None
    first = line[0]
    if first in " \t\x00\ufeff" or line[-1] in " \t\r\n":
        line = line.strip(" \t\r\n\x00\ufeff")
        if not line:
            return None
        first = line[0]
    if first == "S":
        if line.startswith("STEP") and (len(line) == 4 or line[4] in " \t"):
            return _parse_step(line)
    elif first == "P":
        if line.startswith("PROGRESS") and (len(line) == 8 or line[8] in " \t"):
            return _parse_progress(line)
    elif first == "{":
        if line[-1] == "}":
            return _parse_json(line)
        return None
    if "%|" in line:
        return _parse_bar(line)
    return None


def _parse_step(line: str) -> ParsedLine:
    match = _STEP_RE.match(line)
    if match is None:
        return _ignored(f"malformed STEP line: {_clip(line)!r}")
    index, total, name = match.groups()
    name = name.strip() if name else None
    if index is None:
        if not name:
            return _ignored("STEP without a step name")
        return ParsedLine(_STEP, step=name)
    i, n = int(index), int(total)
    if n < 1 or not 1 <= i <= n:
        return _ignored(f"STEP {i}/{n}: the index must be within 1..{max(n, 1)}")
    return ParsedLine(_STEP, step=name or None, step_index=i, step_total=n)


def _parse_progress(line: str) -> ParsedLine:
    parts = line[8:].split(None, 1)
    if not parts:
        return _ignored("PROGRESS without a percent")
    token = parts[0]
    if _NUMBER_RE.fullmatch(token) is None:
        return _ignored(f"PROGRESS needs a number 0..100, got {_clip(token)!r}")
    value = float(token.rstrip("%"))
    if not 0.0 <= value <= 100.0:
        return _ignored(f"PROGRESS {token} is outside 0..100")
    return ParsedLine(
        _PROGRESS, percent=value, message=_message(parts[1]) if len(parts) > 1 else None
    )


def _parse_json(line: str) -> ParsedLine | None:
    if len(line) > MAX_JSON_CHARS:
        return _ignored(f"JSON line longer than {MAX_JSON_CHARS} characters")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None  # a line that merely starts with '{': ordinary output
    if not isinstance(obj, dict) or not any(key in obj for key in _OUR_JSON_KEYS):
        return None  # somebody's JSON log line, not a progress line
    step = obj.get("step")
    if step is not None and (not isinstance(step, str) or not step.strip()):
        return _ignored(f"JSON 'step' must be a non-empty string, got {_clip(repr(step))}")
    progress = obj.get("progress")
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            return _ignored(f"JSON 'progress' must be a number, got {_clip(repr(progress))}")
        try:
            progress = float(progress)
        except OverflowError:
            progress = math.inf
        if not math.isfinite(progress) or not 0.0 <= progress <= 100.0:
            return _ignored(f"JSON 'progress' {progress} is outside 0..100")
    message = obj.get("message")
    if message is not None and not isinstance(message, str):
        return _ignored(f"JSON 'message' must be a string, got {_clip(repr(message))}")
    result = obj.get("result")
    if result is not None and not isinstance(result, dict):
        return _ignored(f"JSON 'result' must be an object, got {_clip(repr(result))}")
    return ParsedLine(
        _JSON,
        step=step.strip() if step is not None else None,
        percent=progress,
        message=_message(message),
        result=result,
    )


def _parse_bar(line: str) -> ParsedLine | None:
    match = _BAR_RE.search(line)
    if match is None:
        return None
    percent, n, n_scale, total, total_scale = match.groups()
    fraction = None
    if n is not None:
        denominator = float(total) * _SCALE[total_scale]
        if denominator > 0:
            fraction = float(n) * _SCALE[n_scale] / denominator
    if fraction is None:
        fraction = int(percent) / 100.0
    return ParsedLine(_BAR, fraction=min(max(fraction, 0.0), 1.0))


class ProgressTracker:
    """Overall progress of one job from its parsed output lines (see the module docstring)."""

    def __init__(
        self,
        steps: Sequence[str],
        weights: Sequence[float] | None = None,
        *,
        cap: float = 99.9,
    ) -> None:
        steps = list(steps)
        if not steps:
            raise ValueError("a tracker needs at least one step")
        if any(not isinstance(s, str) or not s for s in steps):
            raise ValueError(f"step names must be non-empty strings: {steps!r}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"step names must be unique: {steps!r}")
        if weights is None:
            weights = [1.0] * len(steps)
        weights = [float(w) for w in weights]
        if len(weights) != len(steps):
            raise ValueError(f"{len(weights)} weights for {len(steps)} steps")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0, and not all 0: {weights!r}")
        if not 0.0 < cap <= 100.0:
            raise ValueError(f"cap must be within (0, 100], got {cap}")
        total = sum(weights)
        self.steps: tuple[str, ...] = tuple(steps)
        self._shares = [w * 100.0 / total for w in weights]
        self._starts = [sum(self._shares[:i]) for i in range(len(steps))]
        self._positions = {name: i for i, name in enumerate(steps)}
        self._cap = cap
        self._step = -1  # index of the current step; -1 before the first
        self._fraction = 0.0  # within the current step
        self._percent = 0.0
        self._message: str | None = None
        self._done = False
        self.last_ignored_reason: str | None = None

    @property
    def progress_percent(self) -> float:
        return self._percent

    @property
    def current_step(self) -> str | None:
        return None if self._done or self._step < 0 else self.steps[self._step]

    @property
    def completed_steps(self) -> list[str]:
        return list(self.steps) if self._done else list(self.steps[: max(self._step, 0)])

    @property
    def message(self) -> str | None:
        return self._message

    @property
    def done(self) -> bool:
        return self._done

    def snapshot(self) -> TrackerUpdate:
        return TrackerUpdate(self._percent, self.current_step, self._message)

    def feed(self, parsed: ParsedLine | None) -> TrackerUpdate | None:
        """Apply one parsed line; the new state if anything changed, else None."""
        self.last_ignored_reason = None
        if parsed is None:
            return None
        if parsed.kind is _IGNORED:
            self.last_ignored_reason = parsed.reason
            return None
        if self._done:
            if parsed.result is None:
                self.last_ignored_reason = "the job has already finished"
            return None
        changed = False
        if parsed.step is not None or parsed.step_index is not None:
            changed = self._enter_step(parsed)
        if parsed.fraction is not None:
            changed = self._advance_in_step(parsed.fraction) or changed
        if parsed.percent is not None:
            changed = self._set_overall(parsed.percent) or changed
        if parsed.message is not None and parsed.message != self._message:
            self._message = parsed.message
            changed = True
        return self.snapshot() if changed else None

    def finish(self) -> TrackerUpdate:
        """The job succeeded: 100%, no current step, every step completed."""
        self._done = True
        self._percent = 100.0
        return self.snapshot()

    def _enter_step(self, parsed: ParsedLine) -> bool:
        name, index, total = parsed.step, parsed.step_index, parsed.step_total
        position = self._positions.get(name) if name is not None else None
        if position is None:
            if index is not None and total == len(self.steps):
                position = index - 1
            else:
                label = repr(name) if name is not None else f"{index}/{total}"
                self.last_ignored_reason = (
                    f"unknown step {label}: the steps are {', '.join(self.steps)}"
                )
                return False
        if position < self._step:
            self.last_ignored_reason = (
                f"step {self.steps[position]!r} is before the current step "
                f"{self.steps[self._step]!r}"
            )
            return False
        if position == self._step:
            return False
        self._step = position
        self._fraction = 0.0
        self._raise_to(self._starts[position])
        return True

    def _advance_in_step(self, fraction: float) -> bool:
        changed = False
        if self._step < 0:
            self._step = 0
            changed = True
        if fraction < self._fraction:
            self.last_ignored_reason = (
                f"bar went back from {self._fraction:.3f} to {fraction:.3f} within "
                f"{self.steps[self._step]!r}"
            )
            return changed
        self._fraction = fraction
        share = self._shares[self._step]
        return (
            self._raise_to(self._starts[self._step] + share * min(fraction, IN_STEP_CAP)) or changed
        )

    def _set_overall(self, percent: float) -> bool:
        if round(min(percent, self._cap), 2) < self._percent:
            self.last_ignored_reason = (
                f"progress {percent:g} is below the current {self._percent:g}"
            )
            return False
        return self._raise_to(percent)

    def _raise_to(self, percent: float) -> bool:
        value = round(min(percent, self._cap), 2)
        if value > self._percent:
            self._percent = value
            return True
        return False


class LineSplitter:
    """Raw output bytes -> text lines, a partial line kept until its end arrives.

    ``feed(data)`` returns the lines that ``data`` completed; ``close()`` returns the
    last, unterminated one. Lines end at ``\\n``, ``\\r\\n`` or a bare ``\\r``; empty
    lines are dropped. A line longer than ``max_line_bytes`` keeps its first
    ``max_line_bytes`` bytes (``truncated_lines`` counts them); the rest is read and
    dropped, so memory stays bounded whatever the child prints.
    """

    def __init__(self, max_line_bytes: int = 64 * 1024, encoding: str = "utf-8") -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        self.max_line_bytes = max_line_bytes
        self.encoding = encoding
        self.truncated_lines = 0
        self._buffer = bytearray()
        self._overflow = False  # dropping the tail of an over-long line

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []
        # bytes.splitlines splits on \n, \r\n and \r only. A \r\n cut between two feeds
        # ends the line at the \r and leaves an empty line at the \n, which is dropped.
        pieces = data.splitlines()
        tail = None if data[-1] in (0x0A, 0x0D) else pieces.pop()
        lines = []
        for piece in pieces:
            line = self._take(piece)
            if line:
                lines.append(line)
        if tail is not None:
            self._keep(tail)
        return lines

    def close(self) -> list[str]:
        line = self._take(b"")
        return [line] if line else []

    def _keep(self, piece: bytes) -> None:
        room = self.max_line_bytes - len(self._buffer)
        if len(piece) > room:
            if not self._overflow:
                self._overflow = True
                self.truncated_lines += 1
            piece = piece[: max(room, 0)]
        self._buffer += piece

    def _take(self, piece: bytes) -> str:
        """The line that ends after ``piece``; resets the buffer."""
        if not self._buffer and len(piece) <= self.max_line_bytes:
            return piece.decode(self.encoding, "replace")
        self._keep(piece)
        line = self._buffer.decode(self.encoding, "replace")
        self._buffer = bytearray()
        self._overflow = False
        return line
