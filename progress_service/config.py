"""Settings, read from the environment at an entry point and passed down.

Nothing is read at import time: call :meth:`Settings.from_env` where a program
starts (the CLI, ``create_app``, the RQ job) and hand the result on.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_WEB_REDIS_POOL = 3
DEFAULT_SSE_KEEPALIVE = 15.0
DEFAULT_ETA_HISTORY_JOBS = 50
MAX_ETA_HISTORY_JOBS = 10_000
T = TypeVar("T")


READ_AUTH_OPEN, READ_AUTH_TOKEN = "open", "token"


class ConfigError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _read_auth(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(``PROGRESS_READ_AUTH``, ``PROGRESS_SECRET_KEY``): ``token`` without a key is a config error."""
    mode = (environ.get("PROGRESS_READ_AUTH") or READ_AUTH_OPEN).strip().lower()
    if mode not in (READ_AUTH_OPEN, READ_AUTH_TOKEN):
        raise ConfigError(f"PROGRESS_READ_AUTH={mode!r} must be {READ_AUTH_OPEN!r} or {READ_AUTH_TOKEN!r}")
    key = environ.get("PROGRESS_SECRET_KEY") or None
    if mode == READ_AUTH_TOKEN and key is None:
        raise ConfigError("PROGRESS_READ_AUTH=token needs PROGRESS_SECRET_KEY (it signs the read tokens)")
    return mode, key


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value != value or value < minimum or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number >= {minimum:g}")
    return value


def _whole_number(environ: Mapping[str, str], name: str, default: int, *, minimum: int,
                  maximum: int) -> int:
    raw = environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={raw!r} must be a whole number from {minimum} to {maximum}")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be 0 or 1")


def redacted_url(url: str) -> str:
    """``url`` with its password (``//user:password@``) shown as ``***``, for messages and logs."""
    return re.sub(r"(//[^/@:]*:)[^/]*@", r"\1***@", url)


def _redis_url(name: str, url: str) -> str:
    """``url`` if redis-py can connect by it, else a ``ConfigError`` naming ``name``."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"{name}={redacted_url(url)!r} is not a Redis URL: {exc}") from None
    return url


def _database_url(url: str) -> str:
    """``url`` if libpq can parse it (a URL or a ``key=value`` string), else a ``ConfigError``.

    Without psycopg (a producer that only reports progress) nothing here ever
    connects to PostgreSQL, and the URL is left as it is.
    """
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return url
    try:
        params = conninfo_to_dict(url)
    except Error as exc:
        reason = str(exc).strip().splitlines()[0].replace(url, redacted_url(url))
        raise ConfigError(f"DATABASE_URL={redacted_url(url)!r} is not a PostgreSQL URL: {reason}") from None
    port = str(params.get("port", ""))
    if port and not all(p.strip().isdigit() for p in port.split(",")):
        raise ConfigError(f"DATABASE_URL={redacted_url(url)!r} is not a PostgreSQL URL: "
                          f"the port {port!r} is not a number")
    return url


@dataclass(frozen=True)
class Settings:
    """Every setting of the documented configuration table, with its default.

    The five before ``read_auth``, ``eta_history_jobs`` and ``retry_backoff`` are this
    implementation's own (README, "Configuration").
    """

    redis_url: str = DEFAULT_REDIS_URL
    progress_redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    database_url: str = DEFAULT_DATABASE_URL
    key_prefix: str = "progress"
    stale_after: float = 60.0
    pending_stale_after: float = 300.0
    min_interval: float = 1.0
    worker_lost_after: float = 30.0
    job_ttl: int = 604800
    api_token: str | None = None
    queue_name: str = "pipelines"
    history_maxlen: int = 1000
    job_timeout: int = 3600  # PROGRESS_JOB_TIMEOUT: seconds RQ lets a job run
    output_dir: str = ""  # PROGRESS_OUTPUT_DIR: where jobs write; "" is <tmp>/progress-service/videos
    web_redis_pool: int = DEFAULT_WEB_REDIS_POOL  # PROGRESS_WEB_REDIS_POOL: read connections per web process
    sse_keepalive: float = DEFAULT_SSE_KEEPALIVE  # PROGRESS_WEB_SSE_KEEPALIVE: seconds of quiet before a comment
    read_auth: str = READ_AUTH_OPEN  # PROGRESS_READ_AUTH: "open", or "token" (every read needs a token)
    secret_key: str | None = field(default=None, repr=False)  # PROGRESS_SECRET_KEY: signs read tokens
    eta_history_jobs: int = DEFAULT_ETA_HISTORY_JOBS  # PROGRESS_ETA_HISTORY_JOBS: completed jobs the ETA learns from
    # PROGRESS_PIPELINES: a TOML file of the user's own pipelines, read where the registry is
    # first asked for (progress_service.pipelines.load_pipelines), not here
    pipelines_file: str | None = None
    retry_backoff: float = 10.0  # PROGRESS_RETRY_BACKOFF: seconds before an automatic retry, doubled each time

    @property
    def reads_need_token(self) -> bool:
        return self.read_auth == READ_AUTH_TOKEN

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats of a running job: min(5, worker_lost_after / 3).

        A job's runner stamps ``heartbeat_at`` this often; a reader that has not seen
        one for three intervals knows the worker has gone quiet.
        """
        return max(0.1, min(5.0, self.worker_lost_after / 3))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (``os.environ`` when None)."""
        env = os.environ if environ is None else environ
        redis_url = _redis_url("REDIS_URL", env.get("REDIS_URL") or DEFAULT_REDIS_URL)
        prefix = env.get("PROGRESS_KEY_PREFIX") or "progress"
        if any(c in prefix for c in " {}\n"):
            raise ConfigError(f"PROGRESS_KEY_PREFIX={prefix!r} may not hold spaces or braces")
        cluster = _flag(env, "PROGRESS_REDIS_CLUSTER")
        if cluster and not env.get("PROGRESS_REDIS_URL"):
            raise ConfigError(
                "PROGRESS_REDIS_CLUSTER=1 needs PROGRESS_REDIS_URL (a node of the cluster): "
                "REDIS_URL stays RQ's plain Redis, which cannot be a cluster"
            )
        read_auth, secret_key = _read_auth(env)
        return cls(
            redis_url=redis_url,
            progress_redis_url=_redis_url("PROGRESS_REDIS_URL", env["PROGRESS_REDIS_URL"])
            if env.get("PROGRESS_REDIS_URL") else redis_url,
            redis_cluster=cluster,
            database_url=_database_url(env["DATABASE_URL"]) if env.get("DATABASE_URL")
            else DEFAULT_DATABASE_URL,
            key_prefix=prefix,
            stale_after=_number(env, "PROGRESS_STALE_AFTER", 60.0),
            pending_stale_after=_number(env, "PROGRESS_PENDING_STALE_AFTER", 300.0),
            min_interval=_number(env, "PROGRESS_MIN_INTERVAL", 1.0),
            worker_lost_after=_number(env, "PROGRESS_WORKER_LOST_AFTER", 30.0, minimum=1),
            job_ttl=int(_number(env, "PROGRESS_JOB_TTL", 604800, minimum=1)),
            api_token=env.get("PROGRESS_API_TOKEN") or None,
            queue_name=env.get("PROGRESS_QUEUE") or "pipelines",
            job_timeout=int(_number(env, "PROGRESS_JOB_TIMEOUT", 3600, minimum=1)),
            output_dir=env.get("PROGRESS_OUTPUT_DIR") or "",
            web_redis_pool=int(_number(env, "PROGRESS_WEB_REDIS_POOL", DEFAULT_WEB_REDIS_POOL, minimum=1)),
            sse_keepalive=_number(env, "PROGRESS_WEB_SSE_KEEPALIVE", DEFAULT_SSE_KEEPALIVE, minimum=0.1),
            read_auth=read_auth,
            secret_key=secret_key,
            eta_history_jobs=_whole_number(env, "PROGRESS_ETA_HISTORY_JOBS", DEFAULT_ETA_HISTORY_JOBS,
                                           minimum=1, maximum=MAX_ETA_HISTORY_JOBS),
            pipelines_file=(env.get("PROGRESS_PIPELINES") or "").strip() or None,
            retry_backoff=_number(env, "PROGRESS_RETRY_BACKOFF", 10.0),
        )


# -- the web server's own variables ---------------------------------------------------


def whole_number(text: str) -> int:
    """``text`` as an int; else ``argparse.ArgumentTypeError`` (a command line's ``type``)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """``text`` as an int of at least 1 (a command line's ``type``)."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def tcp_port(text: str) -> int:
    """``text`` as a TCP port, 1 to 65535 (a command line's ``type``)."""
    value = whole_number(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, got {value}")
    return value


class _WebVariable(Generic[T]):
    """One ``PROGRESS_WEB_*`` variable of :class:`WebSettings`, read when it is asked for."""

    def __init__(self, name: str, default: str, parse: Callable[[str], T]) -> None:
        self.name, self.default, self.parse = name, default, parse

    def __get__(self, settings: WebSettings, owner: type | None = None) -> T:
        raw = settings.environ.get(self.name) or self.default
        try:
            return self.parse(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{self.name}={raw!r}: {exc}") from None


class WebSettings:
    """The web server's ``PROGRESS_WEB_*`` variables (``progress-service web`` and
    ``web/gunicorn_conf.py``), each read when it is asked for: a malformed one is a
    ``ConfigError`` (naming it) of the web server alone, not of every command, and only
    where the command line has not given the value instead.

    (``PROGRESS_WEB_REDIS_POOL`` and ``PROGRESS_WEB_SSE_KEEPALIVE`` tune the app in
    every web process: they are :class:`Settings`'.)
    """

    host = _WebVariable("PROGRESS_WEB_HOST", "127.0.0.1", str)  # the address `web` listens on
    port = _WebVariable("PROGRESS_WEB_PORT", "8000", tcp_port)
    workers = _WebVariable("PROGRESS_WEB_WORKERS", "2", positive_int)  # gunicorn worker processes
    connections = _WebVariable("PROGRESS_WEB_CONNECTIONS", "4000", positive_int)  # per worker
    # gunicorn's address when it is run by hand with web/gunicorn_conf.py (`web` passes its own)
    bind = _WebVariable("PROGRESS_WEB_BIND", "127.0.0.1:8000", str)
    access_log = _WebVariable("PROGRESS_WEB_ACCESS_LOG", "0", lambda raw: raw == "1")  # 1: every request
    log_level = _WebVariable("PROGRESS_WEB_LOG_LEVEL", "info", str)  # gunicorn's, and the app's loggers'

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
