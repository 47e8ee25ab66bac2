"""The ``progress-service`` command line.

It lives outside ``progress_service`` because it wires every room together
(the core, ``worker`` and ``web``), and the core imports neither. Each area
registers its own subcommands from its own module here:

- ``worker_commands``: worker, submit, retry, cancel, run, papers
- ``web_commands``: web
- ``data_commands``: watch, mirror, db, demo
- ``pipeline_commands``: pipelines
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from progress_cli import exit_codes
from progress_cli.embedded import EmbeddedServerError
from progress_cli.extras import missing_extra
from progress_service import ProgressError
from progress_service.config import ConfigError
from progress_service.errors import (
    BackendUnavailable,
    JobConflict,
    JobNotFound,
    SchemaMissing,
)

AREAS = ("worker_commands", "web_commands", "data_commands", "pipeline_commands")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits ``exit_codes.USAGE``: 2 means "canceled" here."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message}\n")


class CommandParser(Parser):
    """A subcommand's parser: an argument it does not know is its own usage error.

    argparse hands a subcommand's unknown arguments up to the top-level parser,
    which then prints the top-level usage (``progress-service [-h] [-v] COMMAND``)
    instead of the subcommand's, the one that says what it does take.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="progress-service",
        description="Track the progress of long pipeline jobs: one atomic Redis store, "
        "RQ workers, a status API with live events, and a PostgreSQL record of finished jobs. "
        "Configuration comes from the environment (REDIS_URL, DATABASE_URL, PROGRESS_*; see README).",
        epilog=exit_codes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True,
                               parser_class=CommandParser)
    for area in AREAS:
        importlib.import_module(f"{__name__}.{area}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except (ProgressError, ConfigError) as exc:
        print(f"progress-service {args.subcommand}: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except ModuleNotFoundError as exc:  # a module of an extra that is not installed
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(f"progress-service {args.subcommand}: {missing}", file=sys.stderr)
        return exit_codes.CONFIG


def exit_code_of(exc: Exception) -> int:
    """The exit status for an error that stopped a command (see ``exit_codes``)."""
    if isinstance(exc, ConfigError | SchemaMissing):
        return exit_codes.CONFIG
    if isinstance(exc, BackendUnavailable | EmbeddedServerError):
        return exit_codes.UNAVAILABLE
    if isinstance(exc, JobNotFound):
        return exit_codes.NOT_FOUND
    if isinstance(exc, ValueError | JobConflict):
        return exit_codes.USAGE
    return exit_codes.SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
