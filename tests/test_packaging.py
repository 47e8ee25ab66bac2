"""The wheel carries the Lua scripts: a non-editable install works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_ships_the_lua_scripts(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("progress_service-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in sorted((ROOT / "lua").glob("*.lua")):
        assert f"progress_service/lua/{script.name}" in names
    assert "progress_service/py.typed" in names  # PEP 561: the core ships its types
    assert "web/templates/status.html" in names or any(n.startswith("web/templates/") for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import progress_service.scripts as s;"
        "d = s.lua_dir(); print(d);"
        "assert 'site' in str(d), d;"
        "assert 'update_progress' in s.script_source('update_progress')"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(site)}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert str(site) in run.stdout
