"""The `sam2ct` command line. Each sub-command lives in its own module with a ``register``.

Contract (../shared/docs/architecture.md): ``--json`` prints one JSON document on stdout, logs go to
stderr, and a failure exits non-zero with one line naming the input and the problem.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from dicom_io.printable import escape_logs, printable

logger = logging.getLogger(__name__)

# Sub-command modules, in help order. Each defines ``register(subparsers)`` which adds its parser(s)
# and sets ``func`` (args -> exit code) as a default.
_COMMANDS = (
    "synth", "gsps", "segment", "evaluate", "model", "train", "pacs",
    "harvest", "reconcile", "catalog", "review", "export", "db", "demo", "completion",
)

#: What ``sam2ct --help`` says first, for the people who use it.
DESCRIPTION = ("Mine radiologists' GSPS arrows and lines from a PACS into 3D CT lesion\n"
               "segmentations (DICOM SEG), keep them in a catalog, export training datasets.")
EPILOG = """\
Start here:
  sam2ct demo                                  the whole pipeline on synthetic studies, no set-up
  sam2ct pacs echo                             check the link to your PACS (SAM2CT_PACS)
  sam2ct harvest --from 2026-01-05 --to 2026-01-05
  sam2ct catalog query --kind line --min-volume 1
  sam2ct export --format nnunet --out nnunet --kind line

Every command has --help. Settings, deployment and more examples: the README (README.md
beside the source). Shell completion: eval "$(sam2ct completion bash)".
"""


#: The distribution (pyproject.toml's ``name``) whose version ``--version`` prints.
DISTRIBUTION = "sam2ct-harvest"
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Longest error message printed (a driver or library may say a lot, or echo an input).
ERROR_CHARS = 1000  # room for a UID, the PACS and what to check


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors one line (escaped) instead of the usage and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(message, ERROR_CHARS)} (see --help)\n")


class _NoTraceback(logging.Formatter):
    """Log lines without the tracebacks a library attaches (Prefect's failed task and flow
    runs): one line each unless ``-v``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, its ``exc_info``, cached ``exc_text`` and ``stack_info`` left out."""
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command registered."""
    parser = _Parser(prog="sam2ct", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"flows.cli.{name}").register(sub)
    return parser


def version() -> str:
    """This installation's version, from the package metadata (``unknown`` when the source is
    used without being installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sam2ct` console script.

    Returns 0, or the command's own code; 2 with one line for a usage error or bad input
    (``CommandError``, ``CatalogError``, ``ValueError``, a missing file); 1 with one line for
    a PACS that failed (``PacsError``: its message names the PACS and what to check), or
    ``Type: message`` for anything else (its traceback logged at debug: ``-v`` shows it);
    130 when interrupted.
    """
    from db.engine import CatalogError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (one line, already printed)
        return done.code if isinstance(done.code, int) else 0
    quiet_prefect(args.verbose)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (CommandError, CatalogError, ValueError, FileNotFoundError,
            NotADirectoryError) as exc:
        return fail(args.command, exc, 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        logger.debug("sam2ct %s failed", args.command, exc_info=True)
        if _is_pacs_error(exc):
            return fail(args.command, exc, 1)
        return fail(args.command, f"{type(exc).__name__}: {exc}", 1)


def _is_pacs_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``dicom_io.pacs`` error (whose message says it all), without
    importing the PACS client (pynetdicom) for commands that never used it."""
    errors = sys.modules.get("dicom_io.pacs.errors")
    return errors is not None and isinstance(exc, errors.PacsError)


#: Prefect settings the command line sets unless the environment has them: no telemetry (an
#: offline host logs an error, with its traceback, each time it cannot send it; the temporary
#: local server's "database is locked" under load), and Prefect's INFO lines only with -v.
PREFECT_QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def quiet_prefect(verbose: bool) -> None:
    """Set ``PREFECT_QUIET`` (and, unless ``verbose``, Prefect's log level WARNING) in this
    process's environment, before Prefect is imported; a value the user set is kept."""
    quiet = {**PREFECT_QUIET, **({} if verbose else {"PREFECT_LOGGING_LEVEL": "WARNING"})}
    for name, value in quiet.items():
        os.environ.setdefault(name, value)


#: Libraries that narrate at INFO (every association, dataset, SQL statement, HTTP call, copied
#: module): WARNING unless -v. pynetdicom logs each failed connect or abort at ERROR, which our
#: own error line (naming the PACS and what to check) already says: only CRITICAL unless -v.
LIBRARY_LEVELS = {"pynetdicom": logging.CRITICAL, "prefect": logging.WARNING,
                  "sqlalchemy": logging.WARNING, "alembic": logging.WARNING,
                  "httpx": logging.WARNING, "highdicom": logging.WARNING,
                  "uvicorn": logging.WARNING, "fastapi": logging.WARNING}


class _CliHandler(logging.StreamHandler):
    """The command line's stderr handler (told apart from others when logging is set up
    again)."""


#: Prefect's loggers of run states ("Task run failed with exception ...", "Finished in state
#: Failed(...)"): every failure they tell of is told by us, as an object's recorded failure or
#: the command's error line, so their lines reach the terminal only with -v (the Prefect API
#: still gets them).
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def _not_a_run_state(record: logging.LogRecord) -> bool:
    return not record.name.startswith(RUN_LOGGERS) or record.levelno >= logging.CRITICAL


def configure_logging(verbose: bool | None = None) -> None:
    """Log lines on stderr, escaped (``escape_logs``); without tracebacks and with the
    libraries of ``LIBRARY_LEVELS`` quiet unless ``verbose`` (None: as last time).

    Call it again once Prefect is imported: Prefect's own set-up replaces the root logger's
    handlers with its console handler (tracebacks, its own format) and gives some of its
    loggers console handlers of their own; those are taken out. Where something else handles
    the root logger (pytest, a host application), nothing is added.
    """
    verbose = _VERBOSE[0] if verbose is None else verbose
    _VERBOSE[0] = verbose
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not _replaceable(h)]
    root.handlers = foreign
    escape_logs()
    if foreign:
        return
    handler = _CliHandler(sys.stderr)
    handler.setFormatter((logging.Formatter if verbose else _NoTraceback)(_LOG_FORMAT))
    if not verbose:
        handler.addFilter(_not_a_run_state)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in (*LIBRARY_LEVELS, "prefect._internal", "prefect.server"):
        library = logging.getLogger(name)
        library.handlers = [h for h in library.handlers if not _replaceable(h)]
        library.propagate = True
    if not verbose:
        for name, level in LIBRARY_LEVELS.items():
            logging.getLogger(name).setLevel(level)


_VERBOSE = [False]  # the last configure_logging's verbosity, for a call after Prefect's set-up


def _replaceable(handler: logging.Handler) -> bool:
    """Ours, or a console handler of Prefect's logging set-up."""
    return isinstance(handler, _CliHandler) or (
        type(handler).__module__.startswith("prefect.")
        and isinstance(handler, logging.StreamHandler))


def fail(command: str, error: object, code: int) -> int:
    """Print ``sam2ct COMMAND: error: ERROR`` (escaped, cut to ``ERROR_CHARS``) on stderr;
    return ``code``."""
    print(f"sam2ct {command}: error: {printable(error, ERROR_CHARS)}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
