"""The pipelines a job can run: name -> steps, their weights, and the command that runs one.

    registry = load_pipelines(settings)          # bundled + PROGRESS_PIPELINES + entry points
    pipeline = get_pipeline("transcode", settings)
    store.create_job(job_id, paper_id, steps=list(pipeline.steps), pipeline=pipeline.name)
    argv = pipeline.command(paper_id, out_dir, job_id)   # a worker runs it; worker.parser reads its output
    tracker = ProgressTracker(pipeline.steps, pipeline.weights)

This is the registry of pipeline *definitions*: what a producer, the web and
``progress-service submit`` need to create and queue a job, and nothing that runs
one (the runner, the process tree and the video code live in ``worker/``). The
command is data to them: an argv the worker starts, naming the pipeline's program.

A pipeline is any program that prints the progress lines the README describes
("What a pipeline prints") and, on success, a last stdout line ``{"result": {...}}``;
see worker/pipelines/video.py for the one that ships. Where they come from:

- ``PIPELINES``: the bundled ones (``video``), and any a program puts there itself;
- the TOML file named by ``PROGRESS_PIPELINES`` (``progress_service.pipeline_config``);
- the entry points of the group ``progress_service.pipelines``: each loads a
  ``Pipeline``, a list of them, or a callable returning either.

The file and the entry points are read once per process, where the registry is first
asked for with settings (``load_pipelines``); a change takes a restart. Anything wrong
with them is a ``ConfigError`` naming where. Each pipeline's ``source`` says where it
came from: ``bundled``, the TOML file's path, or ``entry point <name>``.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .config import ConfigError
from .errors import InvalidInput
from .models import ID_RULE, is_valid_id, validate_id

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "BUNDLED",
    "ENTRY_POINT_GROUP",
    "PIPELINES",
    "Pipeline",
    "PipelineRegistry",
    "describe_pipeline",
    "get_pipeline",
    "load_pipelines",
    "require_pipeline",
]

BUNDLED = "bundled"
ENTRY_POINT_GROUP = "progress_service.pipelines"


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[str, ...]
    # command(paper_id, out_dir, job_id) -> argv
    command: Callable[[str, str, str], list[str]]
    # each step's share of the bar (normalised by the tracker); None: equal shares
    weights: tuple[float, ...] | None = None
    description: str = ""
    # seconds RQ lets one job run; None: PROGRESS_JOB_TIMEOUT
    timeout: int | None = None
    # the command skips the steps whose output its output folder already holds: a retry of a
    # job of this pipeline starts in a copy of the previous attempt's folder, with the steps
    # that attempt completed done (progress_service.retries, worker.resume)
    resumable: bool = False
    # where it comes from: "bundled", the TOML file's path, "entry point <name>"
    source: str = BUNDLED

    def __post_init__(self) -> None:
        if not is_valid_id(self.name):
            raise ValueError(f"pipeline {self.name!r}: the name must match {ID_RULE}")
        # lists are welcome (an entry point's author may write them); kept as tuples
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps or len(set(self.steps)) != len(self.steps) \
                or not all(isinstance(s, str) and s.strip() for s in self.steps):
            raise ValueError(f"pipeline {self.name!r}: steps must be unique names and not empty")
        if self.weights is not None:
            weights = tuple(self.weights)
            if len(weights) != len(self.steps):
                raise ValueError(
                    f"pipeline {self.name!r}: {len(weights)} weights for {len(self.steps)} steps"
                )
            if not all(not isinstance(w, bool) and isinstance(w, int | float) and math.isfinite(w)
                       and w > 0 for w in weights):
                raise ValueError(f"pipeline {self.name!r}: every weight must be a number > 0")
            object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, int)
                                         or self.timeout < 1):
            raise ValueError(f"pipeline {self.name!r}: timeout must be a whole number of seconds >= 1")
        if not isinstance(self.resumable, bool):
            raise ValueError(f"pipeline {self.name!r}: resumable must be True or False")
        if not callable(self.command):
            raise ValueError(f"pipeline {self.name!r}: command must be callable "
                             "(paper_id, out_dir, job_id) -> argv")

    def start_percent(self, steps_done: int) -> float:
        """The bar's percent when the first ``steps_done`` steps are done: the same figure,
        rounded the same way, as the runner's tracker reaches on entering the next step."""
        weights = [float(w) for w in self.weights] if self.weights is not None else [1.0] * len(self.steps)
        total = sum(weights)
        shares = [w * 100.0 / total for w in weights]
        return round(min(sum(shares[:steps_done]), 99.9), 2)  # 99.9: the tracker's cap


def _video_command(paper_id: str, out_dir: str, job_id: str) -> list[str]:
    # The program is named, not imported: the core imports nothing from worker/.
    return [sys.executable, "-m", "worker.pipelines.video", paper_id, "--out", str(out_dir)]


PIPELINES: dict[str, Pipeline] = {
    "video": Pipeline(
        name="video",
        steps=(
            "fetch-paper",
            "generate-script",
            "generate-audio",
            "generate-videos",
            "assemble-video",
        ),
        # each step's share of the bar, from the time a default run spends in it (measured:
        # ~10 ms, ~5 ms, ~0.1 s with espeak-ng, ~1 s drawing frames, ~0.8 s in ffmpeg)
        weights=(2.0, 2.0, 8.0, 48.0, 40.0),
        command=_video_command,
        description="a bundled PubMed paper -> a narrated slide video (MP4)",
        resumable=True,  # it skips a step whose output (checked) is there already
    ),
}


# -- the registry ---------------------------------------------------------------------


class PipelineRegistry(Mapping[str, Pipeline]):
    """Every pipeline a process knows: ``PIPELINES`` (read live), then the user's own."""

    def __init__(self, user: tuple[Pipeline, ...] = ()) -> None:
        self.user = {p.name: p for p in user}

    def __getitem__(self, name: str) -> Pipeline:
        found = PIPELINES.get(name)
        if found is not None:
            return found
        return self.user[name]

    def __iter__(self) -> Iterator[str]:
        yield from PIPELINES
        yield from (name for name in self.user if name not in PIPELINES)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def get_pipeline(self, name: str) -> Pipeline:
        """The pipeline called ``name``; a ValueError names the known ones."""
        try:
            return self[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self))
            raise ValueError(f"unknown pipeline {name!r}: known pipelines are {known}") from None


# What the file and the entry points gave, per PROGRESS_PIPELINES value: read once per process
# (a forked work horse inherits it). Errors are not kept: a fixed file is read on the next ask.
_loaded: dict[str | None, tuple[Pipeline, ...]] = {}
_loading = threading.Lock()


def load_pipelines(settings: Settings) -> PipelineRegistry:
    """The registry for ``settings``: bundled, ``PROGRESS_PIPELINES``' and the entry points'.

    The first call in a process reads the file and loads the entry points; later ones
    reuse them. ``ConfigError`` (naming the file and pipeline, or the entry point) when
    either is broken, or when two sources define one name.
    """
    key = settings.pipelines_file
    with _loading:
        user = _loaded.get(key)
        if user is None:
            user = _read_user_pipelines(key)
            _loaded[key] = user
    return PipelineRegistry(user)


def _read_user_pipelines(path: str | None) -> tuple[Pipeline, ...]:
    from .pipeline_config import read_pipeline_file

    bundled = set(PIPELINES)
    from_file = read_pipeline_file(path, bundled) if path else []
    sources = {p.name: p.source for p in from_file}
    found = list(from_file)
    for pipeline in entry_point_pipelines():
        if pipeline.name in bundled:
            raise ConfigError(f"{pipeline.source} ({ENTRY_POINT_GROUP}): pipeline {pipeline.name!r}: "
                              f"the name is a bundled pipeline's")
        if pipeline.name in sources:
            raise ConfigError(f"{pipeline.source} ({ENTRY_POINT_GROUP}): pipeline {pipeline.name!r} "
                              f"is defined by {sources[pipeline.name]} too: rename one")
        sources[pipeline.name] = pipeline.source
        found.append(pipeline)
    return tuple(found)


def entry_point_pipelines() -> list[Pipeline]:
    """The pipelines of every entry point in the group ``progress_service.pipelines``.

    An entry point names a ``Pipeline``, a list (or tuple) of them, or a callable that
    returns either. One that cannot be imported, raises, or gives anything else is a
    ``ConfigError`` naming it.
    """
    pipelines = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        where = f"entry point {ep.name!r} = {ep.value!r}" + (f" (of {dist.name})" if dist else "")
        try:
            value = ep.load()
            if callable(value) and not isinstance(value, Pipeline):
                value = value()
        except Exception as exc:  # noqa: BLE001 - a user's module: whatever it raises is its fault, named
            raise ConfigError(f"{where} in group {ENTRY_POINT_GROUP}: cannot be loaded: "
                              f"{type(exc).__name__}: {exc}") from None
        items = list(value) if isinstance(value, list | tuple) else [value]
        if not items or not all(isinstance(p, Pipeline) for p in items):
            raise ConfigError(f"{where} in group {ENTRY_POINT_GROUP}: must give a "
                              f"progress_service.pipelines.Pipeline, a list of them, or a callable "
                              f"returning either; got {value!r}")
        pipelines += [replace(p, source=f"entry point {ep.name}") for p in items]
    return pipelines


def get_pipeline(name: str, settings: Settings | None = None) -> Pipeline:
    """The pipeline called ``name``; a ValueError names the known ones.

    With ``settings``: any pipeline of the registry (``load_pipelines``); without: a
    bundled one (``PIPELINES``).
    """
    registry = load_pipelines(settings) if settings is not None else PipelineRegistry()
    return registry.get_pipeline(name)


def require_pipeline(name: object, settings: Settings | None = None) -> Pipeline:
    """``get_pipeline`` for input from outside: a bad name or an unknown one is ``InvalidInput``."""
    validate_id(name, "pipeline")
    try:
        return get_pipeline(str(name), settings)
    except ConfigError:
        raise
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def describe_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as JSON: name, steps, weights, timeout, resumable, description, source."""
    return {
        "name": pipeline.name,
        "steps": list(pipeline.steps),
        "weights": list(pipeline.weights) if pipeline.weights is not None else None,
        "timeout": pipeline.timeout,
        "resumable": pipeline.resumable,
        "description": pipeline.description,
        "source": pipeline.source,
    }
