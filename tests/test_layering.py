"""Imports point one way: the core imports nothing of ours, the web nothing of the worker's,
and only worker/rq_adapter.py touches RQ's private API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: str) -> list[tuple[str, str]]:
    """(file, module) for every import in ``package``, at any depth (inside functions too)."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("progress_service", ("worker", "web", "progress_cli")),
    ("web", ("worker", "progress_cli")),
], ids=["progress_service", "web"])
def test_imports_point_one_way(package, forbidden):
    wrong = [(f, m) for f, m in imported_modules(package) if m.split(".")[0] in forbidden]
    assert wrong == []


def test_the_core_and_the_queue_import_neither_rq_nor_the_worker():
    probe = ("import sys, progress_service, progress_service.queue, progress_service.pipelines; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'rq', 'worker', 'web', 'flask'}))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_rq_private_names_are_touched_in_the_adapter_only():
    private = ("_stopped_job_id", "job_lifecycle", "SHUTDOWN_SIGNAL", "BaseDeathPenalty",
               "get_job_and_execution_ids", "def kill_horse", "def handle_exception")
    touches = sorted(
        (str(path.relative_to(ROOT)), name)
        for package in ("progress_service", "worker", "web", "progress_cli")
        for path in (ROOT / package).rglob("*.py")
        for name in private
        if name in path.read_text()
    )
    assert {f for f, _ in touches} == {"worker/rq_adapter.py"}


def test_only_the_store_talks_to_the_progress_store():
    """Key names, scripts and payload parsing live behind ``ProgressStore``: no other module
    reaches into its client, registers a script or parses an event by hand."""
    reaching = ("store.client", ".register_script(", "store.scripts", '"status":"')
    touches = sorted(
        (str(path.relative_to(ROOT)), what)
        for package in ("progress_service", "worker", "web", "progress_cli")
        for path in (ROOT / package).rglob("*.py")
        if path.relative_to(ROOT).parts[:2] not in (("progress_service", "store.py"),
                                                    ("progress_service", "store"),
                                                    ("progress_service", "scripts.py"))
        for what in reaching
        if what in path.read_text()
    )
    assert touches == []
