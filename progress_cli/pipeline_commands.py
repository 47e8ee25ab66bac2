"""``progress-service pipelines``: every pipeline this configuration knows, and where it comes from."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from progress_cli.parsers import add_command
from progress_service import Settings

PIPELINES_EPILOG = """\
Where pipelines come from:
  bundled                the ones that ship (video)
  <path of a TOML file>  PROGRESS_PIPELINES names it; one [pipelines.<name>] table each:
                           [pipelines.transcode]
                           steps = ["download", "transcode", "upload"]
                           weights = [1, 8, 1]          # optional: each step's share of the bar
                           command = ["python", "-m", "mytool", "{paper_id}", "--out", "{out_dir}"]
                           timeout = 1800               # optional, seconds
                           resumable = false            # optional
                           description = "..."          # optional
                         the command is an argv list (never a shell string); {paper_id},
                         {out_dir} and {job_id} are filled in per argument, and {paper_id}
                         is required
  entry point <name>     a Python distribution's entry point in the group
                         progress_service.pipelines, naming a Pipeline, a list of them, or a
                         callable returning either

A worker knows the pipelines of its own environment: give the web, the workers and
whoever submits the same PROGRESS_PIPELINES and entry points. A submit of a pipeline
that a live worker does not know is refused (exit 64).

exit status: 0 listed; 78 the configuration is not usable: the PROGRESS_PIPELINES file is
missing, is not TOML, or has a mistake (the message names the file, the pipeline and the
key), or an entry point is broken (the message names it).

examples:
  progress-service pipelines
  progress-service pipelines --json | jq -r '.[].name'
  PROGRESS_PIPELINES=/etc/progress/pipelines.toml progress-service pipelines"""

COLUMNS = ("NAME", "STEPS", "WEIGHTS", "TIMEOUT", "RESUMABLE", "SOURCE")


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "pipelines", cmd_pipelines,
        help="every pipeline (bundled, PROGRESS_PIPELINES, entry points): steps, weights, source",
        description="List every pipeline this configuration knows: its name, steps (in order), "
                    "weights, timeout, whether it is resumable, and where it comes from.",
        epilog=PIPELINES_EPILOG)
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list, one object per pipeline (name, steps, weights, "
                             "timeout, resumable, description, source, command)")


def cmd_pipelines(args: argparse.Namespace) -> int:
    from progress_service.pipeline_config import describe_command
    from progress_service.pipelines import describe_pipeline, load_pipelines

    settings = Settings.from_env()
    registry = load_pipelines(settings)  # ConfigError: main prints it and exits 78
    described = [{**describe_pipeline(p), "command": describe_command(p.command)}
                 for p in registry.values()]
    if args.json:
        json.dump(described, sys.stdout, indent=2)
        print()
        return 0
    sys.stdout.write(table(described, settings))
    return 0


def _row(pipeline: dict[str, Any], settings: Settings) -> tuple[str, ...]:
    weights = pipeline["weights"]
    timeout = pipeline["timeout"]
    return (
        pipeline["name"],
        ", ".join(pipeline["steps"]),
        ", ".join(f"{w:g}" for w in weights) if weights else "equal",
        f"{timeout} s" if timeout else f"{settings.job_timeout} s (default)",
        "yes" if pipeline["resumable"] else "no",
        pipeline["source"],
    )


def table(pipelines: list[dict[str, Any]], settings: Settings) -> str:
    """The pipelines as a text table, one row each, columns padded to their widest cell."""
    rows = [COLUMNS, *(_row(p, settings) for p in pipelines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"
