"""compose.yaml, Dockerfile and .dockerignore, checked offline (no Docker engine needed).

``docker compose config`` (v2) or ``docker-compose config`` (v1, Debian's package)
validates the file and prints it resolved; the structure is asserted on that
output as JSON: v2 prints JSON itself, v1's YAML is converted by v1's own Python
(the interpreter of its launcher script), so the test needs no YAML library.
Skipped, saying why, where neither tool is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
APP_SERVICES = ("migrate", "web", "worker", "rq-dashboard")
TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def _env() -> dict[str, str]:
    """The environment without anything that changes how compose reads the file."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DOCKER_", "RQ_DASHBOARD_"))
           and k not in ("WEB_PORT", "PROGRESS_API_TOKEN")}
    env["COMPOSE_PROJECT_NAME"] = "progress-service-test"
    return env


def _docker_compose_v2() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def compose_tool() -> list[str]:
    tool = _docker_compose_v2()
    if tool is None and shutil.which("docker-compose"):
        tool = [shutil.which("docker-compose")]
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: compose.yaml "
                    "not validated (apt-get install docker-compose)")
    return tool


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
                          **kwargs)


@pytest.fixture(scope="module")
def config(compose_tool) -> dict:
    """compose.yaml as the tool resolves it, as a dict."""
    if compose_tool[-1] == "compose":  # v2
        done = _run([*compose_tool, "-f", str(COMPOSE_FILE), "config", "--format", "json"])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    done = _run([*compose_tool, "-f", str(COMPOSE_FILE), "config"])
    assert done.returncode == 0, done.stderr
    launcher = Path(compose_tool[0]).read_text(errors="replace").splitlines()[0]
    if not launcher.startswith("#!") or "python" not in launcher:
        pytest.skip(f"docker-compose is not a Python script ({launcher!r}): cannot read its YAML")
    converted = _run([launcher[2:].strip(), "-c", TO_JSON], input=done.stdout)
    assert converted.returncode == 0, converted.stderr
    return json.loads(converted.stdout)


def test_compose_file_is_valid(compose_tool):
    done = _run([*compose_tool, "-f", str(COMPOSE_FILE), "config", "-q"])
    assert done.returncode == 0, done.stderr


def test_every_service_is_there(config):
    assert set(config["services"]) == {"redis", "postgres", *APP_SERVICES}


def test_app_services_run_one_image_built_from_the_dockerfile(config):
    builds = {json.dumps(config["services"][name].get("build"), sort_keys=True) for name in APP_SERVICES}
    assert len(builds) == 1
    build = config["services"]["web"]["build"]
    assert Path(build["context"]).resolve() == ROOT
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    images = {config["services"][name].get("image") for name in APP_SERVICES}
    assert len(images) == 1


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else command


def test_app_commands_are_real_cli_commands(config):
    argvs = {name: _command(config["services"][name]) for name in ("migrate", "web", "worker")}
    assert argvs["migrate"] == ["progress-service", "db", "upgrade"]
    assert argvs["web"][:2] == ["progress-service", "web"]
    assert argvs["worker"][:2] == ["progress-service", "worker"]
    from progress_cli import build_parser

    parser = build_parser()
    known = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - the registered commands
    for name, argv in argvs.items():
        if argv[1] not in known:
            pytest.skip(f"`progress-service {argv[1]}` is not registered in this tree yet")
        args = parser.parse_args(argv[1:])
        assert callable(args.handler), name
    dashboard = _command(config["services"]["rq-dashboard"])
    assert dashboard[0] == "rq-dashboard"
    assert dashboard[dashboard.index("--redis-url") + 1].startswith("redis://redis:6379")


def test_health_checks_and_start_order(config):
    services = config["services"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    assert services["rq-dashboard"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_worker_can_be_scaled(config):
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    for name, service in config["services"].items():
        assert "container_name" not in service, name


def test_the_rq_dashboard_is_not_published_beyond_loopback(config):
    for port in config["services"]["rq-dashboard"]["ports"]:
        host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
        assert host_ip == "127.0.0.1", port


def test_app_services_point_at_the_compose_servers(config):
    for name in ("migrate", "web", "worker"):
        env = config["services"][name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["DATABASE_URL"]


def test_redis_keeps_an_append_only_file_in_a_named_volume(config):
    """Queued and running jobs live in Redis: it must come back from a crash with them."""
    argv = _command(config["services"]["redis"])
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "redis-server"
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert "redis-data" in config["volumes"]
    mounts = config["services"]["redis"]["volumes"]
    texts = [m if isinstance(m, str) else f"{m['source']}:{m['target']}" for m in mounts]
    assert any(t.split(":")[:2] == ["redis-data", options["--dir"]] for t in texts), texts


def test_postgres_keeps_its_data_in_a_named_volume(config):
    assert "postgres-data" in config["volumes"]
    mounts = config["services"]["postgres"]["volumes"]
    texts = [m if isinstance(m, str) else f"{m['source']}:{m['target']}" for m in mounts]
    assert any(t.startswith("postgres-data:/var/lib/postgresql/data") for t in texts)


def test_dockerfile_builds_one_non_root_image_with_pip_install():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert sum(ln.startswith("FROM ") for ln in instructions) == 1
    installs = [ln for ln in instructions if ln.startswith("RUN pip install")]
    assert installs == ['RUN pip install ".[web,worker,video]" && rm -rf /src']  # what compose runs
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "espeak-ng" in (ROOT / "Dockerfile").read_text()
    # Everything the wheel is built from is copied in (pyproject's packages and force-include).
    copied = " ".join(ln for ln in instructions if ln.startswith("COPY "))
    for path in ("pyproject.toml", "README.md", "lua", "progress_service", "progress_cli", "worker", "web"):
        assert path in copied, path


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv"} <= ignored
    for needed in ("pyproject.toml", "README.md", "lua", "progress_service", "progress_cli", "worker", "web"):
        assert needed not in ignored
