"""The pipelines a job can run: name -> steps, their weights, and the command that runs one.

    pipeline = get_pipeline("video")
    store.create_job(job_id, paper_id, steps=list(pipeline.steps), pipeline=pipeline.name)
    argv = pipeline.command(paper_id, out_dir)   # run it; parse its output with worker.parser
    tracker = ProgressTracker(pipeline.steps, pipeline.weights)

A pipeline is any program that prints the CONTRACT's progress lines ("What the pipeline
prints") and, on success, a last stdout line ``{"result": {...}}``; see
worker/pipelines/video.py for the one that ships.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

# Nothing here imports a pipeline's module: ``python -m worker.pipelines.video`` imports
# this package first, and the module must not be in sys.modules before runpy runs it.

__all__ = ["PIPELINES", "Pipeline", "get_pipeline"]


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[str, ...]
    # command(paper_id, out_dir) -> argv
    command: Callable[[str, str], list[str]]
    # each step's share of the bar (normalised by the tracker); None: equal shares
    weights: tuple[float, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.steps or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"pipeline {self.name!r}: steps must be unique and not empty")
        if self.weights is not None and len(self.weights) != len(self.steps):
            raise ValueError(
                f"pipeline {self.name!r}: {len(self.weights)} weights for {len(self.steps)} steps"
            )


def _video_command(paper_id: str, out_dir: str) -> list[str]:
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
    ),
}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``; a ValueError names the known ones."""
    try:
        return PIPELINES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PIPELINES))
        raise ValueError(f"unknown pipeline {name!r}: known pipelines are {known}") from None
