"""The `sam2ct` command line. Each sub-command lives in its own module with a ``register``.

Contract (../shared/docs/architecture.md): ``--json`` prints one JSON document on stdout, logs go to
stderr, and a failure exits non-zero with one line naming the input and the problem.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Sub-command modules, in help order. Each defines ``register(subparsers)`` which adds its parser(s)
# and sets ``func`` (args -> exit code) as a default.
_COMMANDS = (
    "synth", "gsps", "segment", "evaluate", "model", "train", "pacs",
    "harvest", "catalog", "export", "db", "demo",
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="sam2ct", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"flows.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sam2ct` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # highdicom narrates every copied module at INFO
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"sam2ct {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
