"""The pipelines a job can run: name -> steps, their weights, and the command that runs one.

    pipeline = get_pipeline("video")
    store.create_job(job_id, paper_id, steps=list(pipeline.steps), pipeline=pipeline.name)
    argv = pipeline.command(paper_id, out_dir)   # a worker runs it; worker.parser reads its output
    tracker = ProgressTracker(pipeline.steps, pipeline.weights)

This is the registry of pipeline *definitions*: what a producer, the web and
``progress-service submit`` need to create and queue a job, and nothing that runs
one (the runner, the process tree and the video code live in ``worker/``). The
command is data to them: an argv the worker starts, naming the pipeline's program.

A pipeline is any program that prints the CONTRACT's progress lines ("What the
pipeline prints") and, on success, a last stdout line ``{"result": {...}}``; see
worker/pipelines/video.py for the one that ships. ``PIPELINES`` is the registry:
the bundled ones, and whatever else is put there (a user's own pipelines, from a
TOML file or an entry point, are meant to land in it too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from .errors import InvalidInput
from .models import validate_id

__all__ = ["PIPELINES", "Pipeline", "get_pipeline", "require_pipeline"]


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[str, ...]
    # command(paper_id, out_dir) -> argv
    command: Callable[[str, str], list[str]]
    # each step's share of the bar (normalised by the tracker); None: equal shares
    weights: tuple[float, ...] | None = None
    description: str = ""
    # seconds RQ lets one job run; None: PROGRESS_JOB_TIMEOUT
    timeout: int | None = None
    # the command skips the steps whose output its output folder already holds: a retry of a
    # job of this pipeline starts in a copy of the previous attempt's folder, with the steps
    # that attempt completed done (progress_service.retries, worker.resume)
    resumable: bool = False

    def __post_init__(self) -> None:
        if not self.steps or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"pipeline {self.name!r}: steps must be unique and not empty")
        if self.weights is not None and len(self.weights) != len(self.steps):
            raise ValueError(
                f"pipeline {self.name!r}: {len(self.weights)} weights for {len(self.steps)} steps"
            )
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, int)
                                         or self.timeout < 1):
            raise ValueError(f"pipeline {self.name!r}: timeout must be a whole number of seconds >= 1")
        if not isinstance(self.resumable, bool):
            raise ValueError(f"pipeline {self.name!r}: resumable must be true or false")

    def start_percent(self, steps_done: int) -> float:
        """The bar's percent when the first ``steps_done`` steps are done: the same figure,
        rounded the same way, as the runner's tracker reaches on entering the next step."""
        weights = [float(w) for w in self.weights] if self.weights is not None else [1.0] * len(self.steps)
        total = sum(weights)
        shares = [w * 100.0 / total for w in weights]
        return round(min(sum(shares[:steps_done]), 99.9), 2)  # 99.9: the tracker's cap


def _video_command(paper_id: str, out_dir: str) -> list[str]:
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


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``; a ValueError names the known ones."""
    try:
        return PIPELINES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PIPELINES))
        raise ValueError(f"unknown pipeline {name!r}: known pipelines are {known}") from None


def require_pipeline(name: object) -> Pipeline:
    """``get_pipeline`` for input from outside: a bad name or an unknown one is ``InvalidInput``."""
    validate_id(name, "pipeline")
    try:
        return get_pipeline(str(name))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
