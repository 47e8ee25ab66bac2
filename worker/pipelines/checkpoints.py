"""The video pipeline's checkpoints: what lets a run skip the steps an earlier run completed.

After each step, the pipeline records in ``DIR/checkpoints.json`` the step's output files
with their size and SHA-256, and the little state the next steps need (each slide's length,
the frame count). A run that starts in a folder holding checkpoints (a retry, which the
worker starts in a copy of the previous attempt's folder: ``worker.resume``) skips each step,
in order, whose checkpoint holds: the run's parameters are the same (size, fps, slides,
speech rate, silent), every file is there with the same size and checksum, and it is
readable (a JSON file parses, a WAV file decodes to at least one frame, a PNG starts as
one). The first step whose checkpoint does not hold runs, and every step after it.

The file is replaced whole (written aside, then renamed), so a run killed mid-write leaves
the previous checkpoints, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import wave
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINTS_FILE", "Checkpoints"]

CHECKPOINTS_FILE = "checkpoints.json"
VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def readable(path: Path) -> bool:
    """Whether ``path`` holds what its suffix promises (beyond its checksum: a file that was
    recorded broken stays broken)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".wav":
            with wave.open(str(path), "rb") as w:
                return w.getnframes() > 0
        elif path.suffix == ".png":
            with path.open("rb") as f:
                return f.read(8) == PNG_SIGNATURE
        return path.stat().st_size > 0
    except (OSError, ValueError, EOFError, wave.Error):
        return False
    return True


class Checkpoints:
    """The checkpoints of the run in ``out`` with ``params`` (what its outputs depend on)."""

    def __init__(self, out: Path, params: dict[str, Any]) -> None:
        self.out = out
        self.path = out / CHECKPOINTS_FILE
        self.params = params
        self.steps: dict[str, Any] = {}
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("version") == VERSION and saved.get("params") == params \
                and isinstance(saved.get("steps"), dict):
            self.steps = saved["steps"]

    def holds(self, step: str) -> dict[str, Any] | None:
        """The state ``step`` recorded, if its checkpoint holds (its files unchanged and
        readable); else None, and the checkpoint and every later one are forgotten."""
        entry = self.steps.get(step)
        if isinstance(entry, dict) and self._files_hold(entry.get("files")):
            state = entry.get("state")
            return state if isinstance(state, dict) else {}
        self._forget_from(step)
        return None

    def record(self, step: str, files: list[Path], state: dict[str, Any] | None = None) -> None:
        """``step`` is done: its output ``files`` (under ``out``) and ``state``, saved at once."""
        self.steps[step] = {
            "files": {str(f.relative_to(self.out)): {"size": f.stat().st_size, "sha256": _sha256(f)}
                      for f in files},
            "state": state or {},
        }
        self._save()

    def _files_hold(self, files: object) -> bool:
        if not isinstance(files, dict) or not files:
            return False
        for name, want in files.items():
            path = self.out / name
            if ".." in Path(name).parts or not isinstance(want, dict):
                return False
            try:
                if path.stat().st_size != want.get("size") or _sha256(path) != want.get("sha256"):
                    return False
            except OSError:
                return False
            if not readable(path):
                return False
        return True

    def _forget_from(self, step: str) -> None:
        names = list(self.steps)
        if step in names:
            for name in names[names.index(step):]:
                del self.steps[name]

    def _save(self) -> None:
        aside = self.path.with_name(self.path.name + ".tmp")
        aside.write_text(json.dumps({"version": VERSION, "params": self.params, "steps": self.steps},
                                    indent=1) + "\n", encoding="utf-8")
        os.replace(aside, self.path)
