"""`sam2ct harvest`: not built yet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `harvest` sub-command (placeholder until its issue lands)."""
    parser = sub.add_parser("harvest", help="(not available yet)")
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    from flows.cli import CommandError

    raise CommandError("'harvest' is not available in this version")
