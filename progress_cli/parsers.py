"""One way to declare a subcommand: its parser, its help texts and its handler."""

from __future__ import annotations

import argparse


def add_command(subparsers, name: str, handler=None, **texts) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (help, description, epilog, usage in ``texts``), its epilog
    kept as written unless ``texts`` names another formatter_class, and make ``handler`` (if any) what ``main`` calls for it."""
    texts.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = subparsers.add_parser(name, **texts)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser
