"""``progress-service web``: the Flask app under gunicorn with the gevent worker class.

The command replaces itself with ``python -m gunicorn -c web/gunicorn_conf.py
... web:create_app()``: the gunicorn master stays clean of the app (each
worker imports it after gevent has patched the process), and signals reach
gunicorn directly. :func:`gunicorn_argv` builds that command line; the tests
and benchmarks start their servers with it too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

APP = "web:create_app()"


def web_dir() -> Path:
    """The ``web`` package's folder, found without importing it (the CLI stays light)."""
    spec = importlib.util.find_spec("web")
    if spec is None or spec.origin is None:
        raise RuntimeError("the web package is not installed")
    return Path(spec.origin).resolve().parent


def gunicorn_argv(host: str = "127.0.0.1", port: int = 8000, workers: int = 2, *,
                  worker_connections: int | None = None, access_log: bool = False,
                  log_level: str | None = None, python: str | None = None) -> list[str]:
    """The command line that runs the app under gunicorn (gevent worker, ``web/gunicorn_conf.py``)."""
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_web(args: argparse.Namespace) -> int:
    from progress_cli.extras import require

    require("web")  # checked here: gunicorn imports the app in a process of its own
    argv = gunicorn_argv(args.host, args.port, args.workers, worker_connections=args.worker_connections,
                         access_log=args.access_log, log_level="debug" if args.verbose else None)
    print(f"progress-service web: http://{args.host}:{args.port}/ "
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
        description=(
            "Run the web app under gunicorn with the gevent worker class, so that every open "
            "event stream costs a greenlet, not a process. Endpoints: /api/v1/jobs (JSON API), "
            "/api/v1/jobs/<job_id>/events (Server-Sent Events), /status/<paper_id>/ (live page), "
            "/ (recent jobs), /healthz, /metrics, /rq/ (RQ dashboard). Configuration comes from the "
            "environment: REDIS_URL, PROGRESS_REDIS_URL, DATABASE_URL, PROGRESS_KEY_PREFIX, "
            "PROGRESS_API_TOKEN (writing endpoints and /rq/ need it when set), "
            "PROGRESS_WEB_REDIS_POOL (Redis connections per worker for reads, default 3)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("PROGRESS_WEB_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=_positive, default=int(os.environ.get("PROGRESS_WEB_PORT", "8000")),
                        help="TCP port to listen on")
    parser.add_argument("--workers", type=_positive, default=int(os.environ.get("PROGRESS_WEB_WORKERS", "2")),
                        help="gunicorn worker processes; each holds one pub/sub connection and "
                             "serves thousands of streams")
    parser.add_argument("--worker-connections", type=_positive,
                        default=int(os.environ.get("PROGRESS_WEB_CONNECTIONS", "4000")),
                        help="open connections (streams included) per worker")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.set_defaults(handler=run_web)
