"""``progress-service web``: the Flask app under gunicorn with the gevent worker class.

The command checks the configuration, binds the listening socket itself (a
busy port is one line and exit 78, before anything claims to serve), then
replaces itself with ``python -m gunicorn -c web/gunicorn_conf.py --bind
fd://N ... web:create_app()``, handing gunicorn that socket: the gunicorn
master stays clean of the app (each worker imports it after gevent has patched
the process), and signals reach gunicorn directly. :func:`gunicorn_argv` builds
that command line; the tests and benchmarks start their servers with it too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import textwrap
from pathlib import Path

from progress_cli import exit_codes
from progress_service import Settings
from progress_service.config import WebSettings, positive_int, tcp_port
from progress_service.pipelines import load_pipelines

APP = "web:create_app()"
BACKLOG = 2048  # as web/gunicorn_conf.py

WEB_EPILOG = f"""\
exit status:
  {exit_codes.USAGE}   a bad command line
  {exit_codes.CONFIG}   the configuration is not usable: a malformed REDIS_URL, DATABASE_URL
       or PROGRESS_WEB_* variable, or the address cannot be listened on (the
       port is in use, a port below 1024, a host not on this machine): choose
       another --host/--port. 78, not 69: 69 means Redis or PostgreSQL does not
       answer (try again later), while this needs a change. Nothing is served
       then, and nothing claims to be.
  Once it serves, gunicorn's own: 0 after Ctrl-C or SIGTERM (a graceful stop).
  Redis or PostgreSQL down does not stop it: /healthz answers 503 naming them.

examples:
  progress-service web                              # http://127.0.0.1:8000/
  progress-service web --host 0.0.0.0 --port 8080 --workers 4
  PROGRESS_API_TOKEN=s3cret progress-service web    # writes and /rq/ need the token"""


def web_dir() -> Path:
    """The ``web`` package's folder, found without importing it (the CLI stays light)."""
    spec = importlib.util.find_spec("web")
    if spec is None or spec.origin is None:
        raise RuntimeError("the web package is not installed")
    return Path(spec.origin).resolve().parent


def gunicorn_argv(host: str = "127.0.0.1", port: int = 8000, workers: int = 2, *,
                  worker_connections: int | None = None, access_log: bool = False,
                  log_level: str | None = None, python: str | None = None,
                  bind: str | None = None) -> list[str]:
    """The command line that runs the app under gunicorn (gevent worker, ``web/gunicorn_conf.py``).

    ``bind`` (such as ``fd://5``, a socket already listening) overrides ``host`` and ``port``.
    """
    if bind is None:
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [python or sys.executable, "-m", "gunicorn", "--config", str(web_dir() / "gunicorn_conf.py"),
            "--bind", bind, "--workers", str(workers), "--worker-class", "gevent"]
    if worker_connections is not None:
        argv += ["--worker-connections", str(worker_connections)]
    if access_log:
        argv += ["--access-logfile", "-"]
    if log_level:
        argv += ["--log-level", log_level]
    return [*argv, APP]


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening, which a child process inherits.

    Raises ``OSError`` when the address cannot be had (in use, not ours, not allowed).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_web(args: argparse.Namespace) -> int:
    from progress_cli.extras import require

    require("web")  # checked here: gunicorn imports the app in a process of its own
    settings = Settings.from_env()  # a malformed URL: one line and 78 here, not a traceback per gunicorn worker
    load_pipelines(settings)  # so is a broken PROGRESS_PIPELINES file or pipeline entry point
    web = WebSettings()  # PROGRESS_WEB_*, each read only where the command line did not give it
    if args.host is None:
        args.host = web.host
    if args.port is None:
        args.port = web.port
    if args.workers is None:
        args.workers = web.workers
    if args.worker_connections is None:
        args.worker_connections = web.connections
    where = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"progress-service web: cannot listen on {where}: {exc.strerror or exc}; "
              "choose another --host/--port", file=sys.stderr)
        return exit_codes.CONFIG
    argv = gunicorn_argv(args.host, args.port, args.workers, worker_connections=args.worker_connections,
                         access_log=args.access_log, log_level="debug" if args.verbose else None,
                         bind=f"fd://{sock.fileno()}")
    print(f"progress-service web: http://{where}/ "
          f"({args.workers} gevent worker(s)); the RQ dashboard at /rq/", file=sys.stderr, flush=True)
    # The app imports from the project's packages: make sure gunicorn's workers find them.
    env = dict(os.environ)
    root = str(web_dir().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "web",
        help="serve the status API, live events, pages, /metrics and the RQ dashboard (gunicorn + gevent)",
        description=textwrap.fill(
            "Run the web app under gunicorn with the gevent worker class, so that every open "
            "event stream costs a greenlet, not a process. Endpoints: /api/v1/jobs (JSON API), "
            "/api/v1/jobs/<job_id>/events (Server-Sent Events), /status/<paper_id>/ (live page), "
            "/ (recent jobs), /healthz, /metrics, /rq/ (RQ dashboard). Configuration comes from the "
            "environment: REDIS_URL, PROGRESS_REDIS_URL, DATABASE_URL, PROGRESS_KEY_PREFIX, "
            "PROGRESS_API_TOKEN (writing endpoints and /rq/ need it when set), "
            "PROGRESS_WEB_REDIS_POOL (Redis connections per worker for reads, default 3).", 78),
        epilog=WEB_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The defaults come from the environment when the command runs (a malformed one is a
    # config error of `web` alone, not a traceback of every command): see run_web.
    parser.add_argument("--host", default=None,
                        help="address to listen on (0.0.0.0: every interface; "
                             "default: PROGRESS_WEB_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=tcp_port, default=None,
                        help="TCP port to listen on (default: PROGRESS_WEB_PORT, else 8000)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="gunicorn worker processes; each holds one pub/sub connection and "
                             "serves thousands of streams (default: PROGRESS_WEB_WORKERS, else 2)")
    parser.add_argument("--worker-connections", type=positive_int, default=None,
                        help="open connections (streams included) per worker "
                             "(default: PROGRESS_WEB_CONNECTIONS, else 4000)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.set_defaults(handler=run_web)
