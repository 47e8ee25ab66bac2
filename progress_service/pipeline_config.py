"""The user's own pipelines from a TOML file (``PROGRESS_PIPELINES``), checked strictly.

    [pipelines.transcode]
    steps = ["download", "transcode", "upload"]
    weights = [1, 8, 1]                          # optional: each step's share of the bar
    command = ["python", "-m", "mytool", "{paper_id}", "--out", "{out_dir}"]
    timeout = 1800                               # optional, seconds
    resumable = false                            # optional
    description = "..."                          # optional

``read_pipeline_file(path, bundled)`` returns the file's pipelines, in the file's
order, each a :class:`~progress_service.pipelines.Pipeline` whose ``source`` is the
path. Anything wrong is a ``ConfigError`` whose message names the file, the
pipeline and the key: a file that is missing or is not TOML, an unknown key,
missing or duplicate steps, weights that do not fit the steps, a command that is
not an argv list (a shell string is refused: nothing here runs a shell), a
placeholder other than ``{paper_id}``, ``{out_dir}``, ``{job_id}``, a command
without ``{paper_id}``, a bad timeout, a non-bool ``resumable``, a name that is not
an id or is a bundled pipeline's.

The command is an argv template (:class:`ArgvTemplate`): each argument is filled in
on its own with ``str.format``, so a paper id is always exactly one argument.
"""

from __future__ import annotations

import math
import string
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError
from .models import ID_RULE, is_valid_id

__all__ = ["KEYS", "PLACEHOLDERS", "ArgvTemplate", "read_pipeline_file"]

ENV = "PROGRESS_PIPELINES"
KEYS = ("steps", "weights", "command", "timeout", "resumable", "description")
REQUIRED = ("steps", "command")
PLACEHOLDERS = ("paper_id", "out_dir", "job_id")
MAX_STEP_NAME = 200


@dataclass(frozen=True)
class ArgvTemplate:
    """A pipeline's command as data: argv whose ``{paper_id}``, ``{out_dir}`` and ``{job_id}``
    are filled in per argument. Called like any pipeline command: ``(paper_id, out_dir, job_id)``."""

    argv: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = argv_problem(list(self.argv))
        if problem:
            raise ValueError(problem)

    def __call__(self, paper_id: str, out_dir: str, job_id: str) -> list[str]:
        values = {"paper_id": paper_id, "out_dir": str(out_dir), "job_id": job_id}
        return [arg.format_map(values) for arg in self.argv]


def placeholders_of(arg: str) -> list[str]:
    """The ``{name}`` fields of one argument (``{{`` and ``}}`` are literal braces);
    a ``ValueError`` names a malformed or disallowed one."""
    names = []
    try:
        fields = list(string.Formatter().parse(arg))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise ValueError(f"malformed braces in {arg!r} ({exc}); write {{{{ and }}}} for literal braces") from None
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            raise ValueError(f"unknown placeholder {shown} in {arg!r}: the placeholders are {allowed}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} in {arg!r} takes no conversion or format: "
                             f"write it as {{{name}}}")
        names.append(name)
    return names


def argv_problem(argv: object) -> str | None:
    """What is wrong with ``argv`` as a command template, or None."""
    if isinstance(argv, str):
        return (f"must be a list of arguments (an argv), not a shell string: write "
                f"[{', '.join(repr(a) for a in argv.split()[:3])}, ...]; no shell runs it")
    if not isinstance(argv, list | tuple) or not argv:
        return f"must be a non-empty list of arguments, got {argv!r}"
    seen: list[str] = []
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            return f"argument {i} must be a string, got {arg!r}"
        try:
            seen += placeholders_of(arg)
        except ValueError as exc:
            return str(exc)
    if not argv[0].strip():
        return "the program (its first argument) is empty"
    if "paper_id" not in seen:
        return "must pass {paper_id} in one of its arguments (the paper the job is for)"
    return None


class _Problem(Exception):
    """One key of one pipeline is wrong: (key, what)."""

    def __init__(self, key: str | None, what: str) -> None:
        super().__init__(what)
        self.key = key
        self.what = what


def read_pipeline_file(path: str | Path, bundled: Collection[str] = ()) -> list[Any]:
    """The pipelines of the TOML file at ``path``, in its order; ``ConfigError`` when anything
    is wrong (module docstring). ``bundled``: names the file may not take."""
    from .pipelines import Pipeline

    file = Path(path).expanduser()
    where = f"{ENV}={str(path)!r}"
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"pipelines"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} at the top: the file holds "
                          f"[pipelines.<name>] tables only")
    tables = data.get("pipelines", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: key 'pipelines' must be a table of [pipelines.<name>] tables, "
                          f"got {tables!r}")
    pipelines = []
    for name, table in tables.items():
        try:
            fields = _pipeline_fields(name, table, bundled)
        except _Problem as problem:
            key = f", key {problem.key!r}" if problem.key else ""
            raise ConfigError(f"{where}: pipeline {name!r}{key}: {problem.what}") from None
        pipelines.append(Pipeline(name=name, source=str(path), **fields))
    return pipelines


def _pipeline_fields(name: str, table: object, bundled: Collection[str]) -> dict[str, Any]:
    if not is_valid_id(name):
        raise _Problem(None, f"the name must be an id ({ID_RULE}); write [pipelines.<name>]")
    if name in bundled:
        raise _Problem(None, "the name is a bundled pipeline's: choose another name")
    if not isinstance(table, dict):
        raise _Problem(None, f"must be a table ([pipelines.{name}]), got {table!r}")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise _Problem(unknown[0], f"unknown key: the keys are {', '.join(KEYS)}")
    for key in REQUIRED:
        if key not in table:
            raise _Problem(key, "is missing (required)")
    steps = _steps(table["steps"])
    fields: dict[str, Any] = {"steps": steps, "command": _command(table["command"])}
    if "weights" in table:
        fields["weights"] = _weights(table["weights"], len(steps))
    if "timeout" in table:
        fields["timeout"] = _timeout(table["timeout"])
    if "resumable" in table:
        if not isinstance(table["resumable"], bool):
            raise _Problem("resumable", f"must be true or false, got {table['resumable']!r}")
        fields["resumable"] = table["resumable"]
    if "description" in table:
        if not isinstance(table["description"], str):
            raise _Problem("description", f"must be a string, got {table['description']!r}")
        fields["description"] = table["description"]
    return fields


def _steps(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Problem("steps", f"must be a list of step names, got {value!r}")
    if not value:
        raise _Problem("steps", "is empty: name at least one step")
    for step in value:
        if not isinstance(step, str) or not step.strip() or len(step) > MAX_STEP_NAME:
            raise _Problem("steps", f"every step must be a non-empty name of at most "
                                    f"{MAX_STEP_NAME} characters, got {step!r}")
    duplicates = sorted({s for s in value if value.count(s) > 1})
    if duplicates:
        raise _Problem("steps", f"step {duplicates[0]!r} is named twice: steps must be unique")
    return tuple(value)


def _weights(value: object, steps: int) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise _Problem("weights", f"must be a list of numbers, one per step, got {value!r}")
    if len(value) != steps:
        raise _Problem("weights", f"{len(value)} weights for {steps} steps: give one per step")
    for weight in value:
        if isinstance(weight, bool) or not isinstance(weight, int | float) \
                or not math.isfinite(weight) or weight <= 0:
            raise _Problem("weights", f"every weight must be a number > 0, got {weight!r}")
    return tuple(float(w) for w in value)


def _timeout(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Problem("timeout", f"must be a whole number of seconds >= 1, got {value!r}")
    return value


def _command(value: object) -> ArgvTemplate:
    problem = argv_problem(value)
    if problem:
        raise _Problem("command", problem)
    assert isinstance(value, list)
    return ArgvTemplate(tuple(value))


def describe_command(command: object) -> list[str] | None:
    """A command's argv template as a list, for listings; None for a callable (entry points)."""
    return list(command.argv) if isinstance(command, ArgvTemplate) else None
