"""`sam2ct harvest` and `sam2ct backfill`: run the harvest flows now (both registered here).

Without PREFECT_API_URL the flows run on Prefect's local mode (a temporary local server).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dicom_io.printable import printable
from flows.cli.bounds import bounded_int
from flows.cli.terminal import add_progress_argument, follow_flow, iso_date, shows_progress


def quiet_libraries() -> None:
    """Take logging back once Prefect is imported (its set-up replaces ours): chatty libraries
    at WARNING, one line per record, unless ``-v``."""
    from flows.cli import configure_logging

    configure_logging()




def add_harvest_flags(p: argparse.ArgumentParser) -> None:
    """``--from``/``--to`` and one flag per ``CLI_FLAGS`` option (harvest, backfill, reconcile)."""
    from flows.options import CLI_FLAGS, HarvestOptions

    p.add_argument("--from", dest="start", required=True, type=iso_date,
                   help="first study date (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", required=True, type=iso_date,
                   help="last study date (YYYY-MM-DD)")
    for name, flag in CLI_FLAGS.items():
        field = HarvestOptions.model_fields[name]
        kind = field.annotation
        if kind is bool:
            p.add_argument(flag, dest=name, action="store_true", default=None,
                           help=field.description)
            continue
        p.add_argument(flag, dest=name, type=_converter(field),
                       metavar=flag.removeprefix("--").upper().replace("-", "_"),
                       help=f"{field.description} (default: {_default_of(name, field)})")
    p.add_argument("--harvest-window", dest="harvest_window", metavar="HH:MM-HH:MM",
                   help=argparse.SUPPRESS)  # the old name of --pacs-hours, still accepted
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def _converter(field):
    """The argparse type of an option's field: its pydantic bounds (``ge``/``le``) for ints."""
    if field.annotation is Path:
        return Path
    if field.annotation not in (int, int | None):
        return str
    lo = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    hi = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if lo is None or hi is None:
        raise TypeError(f"option {field.description!r} needs ge= and le= bounds for its flag")
    return bounded_int(lo, hi)


def _default_of(name: str, field) -> str:
    """Where a flag's default comes from, for its help."""
    settings = {"pacs": "SAM2CT_PACS", "catalog_url": "SAM2CT_DATABASE_URL or SQLite",
                "staging_dir": "<data dir>/staging", "output_dir": "<data dir>/seg"}
    if name in settings:
        return settings[name]
    env = f"SAM2CT_{name.upper()}, else " if name in _SETTINGS_FIELDS else ""
    return f"{env}{'none' if field.default is None else field.default}"


_SETTINGS_FIELDS = ("model", "pacs_hours", "segment_deployment", "segment_workers")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``harvest`` and ``backfill`` sub-commands."""
    p = sub.add_parser("harvest", help="harvest one window of study dates now")
    add_harvest_flags(p)
    add_progress_argument(p)
    p.set_defaults(func=run_harvest)
    b = sub.add_parser("backfill", help="harvest a long range window by window, resumable")
    add_harvest_flags(b)
    add_progress_argument(b)
    b.add_argument("--chunk-days", type=bounded_int(1, 3660),
                   default=7, help="days per window (default 7)")
    b.set_defaults(func=run_backfill)


def options_from(args: argparse.Namespace):
    """HarvestOptions from Settings and the flags given."""
    from dicom_io.pacs import PacsHours
    from flows.options import CLI_FLAGS, HarvestOptions
    from flows.settings import Settings

    if args.harvest_window:
        logging.getLogger(__name__).warning("--harvest-window is deprecated: use --pacs-hours "
                                            "(the hours the PACS may be used)")
        args.pacs_hours = args.pacs_hours or args.harvest_window
    if args.pacs_hours:  # one clear line, not pydantic's report
        PacsHours.parse(args.pacs_hours)
    given = {name: getattr(args, name) for name in CLI_FLAGS if getattr(args, name) is not None}
    return HarvestOptions.from_settings(Settings(), **given)


def _print(summaries: list[dict], as_json: bool) -> int:
    if as_json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2,
                         default=str))
    else:
        for s in summaries:
            stages = ", ".join(f"{k} {v}" for k, v in sorted(s["failed_by_stage"].items()))
            print(f"{s['window_start']}..{s['window_end']}: found {s['found']}, "
                  f"already done {s['already_done']}, segmented {s['segmented']}, "
                  f"failed {s['failed']}" + (f" ({stages})" if stages else ""))
    if any(s["warning"] for s in summaries):
        print(f"WARNING: {printable(next(s['warning'] for s in summaries if s['warning']))}",
              file=sys.stderr)
    return 1 if any(s["failed"] for s in summaries) else 0


def checked_options(args: argparse.Namespace, *, create: bool = True):
    """``options_from(args)``, its catalog opened (and migrated) once: a bad catalog is one
    ``CatalogError`` before Prefect starts, not a failed flow run's traceback. ``create``:
    whether the command may create the catalog (``reconcile`` re-counts against one that
    exists)."""
    from dicom_io.pacs import RetrieveMethod
    from dicom_io.pacs.storage import check_port
    from flows.cli.db import catalog_source, open_cli_catalog

    given = args.catalog_url
    if given:
        args.catalog_url = catalog_source(given)[0]  # a SQLite file's path made a URL
    opts = options_from(args)
    open_cli_catalog(given, create=create).dispose()
    check_model(opts.model)
    if opts.method is RetrieveMethod.MOVE:  # our storage SCP's port, free now
        check_port(opts.local_ae(), opts.pacs_settings().host)
    return opts


def check_model(model: str) -> None:
    """A checkpoint given as the model must be a torch checkpoint: one line now, not a failure
    of every series later (in the segment workers, which load it)."""
    if model in ("auto", "classical", "sam2ct"):
        return
    from sam2ct.model.checkpoint import read_checkpoint

    read_checkpoint(Path(model))  # FileNotFoundError, CheckpointError (a ValueError)


def run_harvest(args: argparse.Namespace) -> int:
    """Run ``nightly_harvest`` over ``--from..--to``; exit 1 when anything failed."""
    if args.end < args.start:
        raise ValueError(f"--to {args.end} is before --from {args.start}")
    opts = checked_options(args)  # before Prefect is imported: a bad catalog costs nothing
    from flows.harvest import nightly_harvest

    quiet_libraries()
    with follow_flow("harvest", shows_progress(args)):
        summary = nightly_harvest(args.start, args.end, opts)
    return _print([summary], args.json)


def run_backfill(args: argparse.Namespace) -> int:
    """Run ``backfill`` over ``--from..--to`` in ``--chunk-days`` windows."""
    opts = checked_options(args)
    from flows.harvest import backfill

    quiet_libraries()
    with follow_flow("backfill", shows_progress(args)):
        summaries = backfill(args.start, args.end, args.chunk_days, opts)
    if not summaries:
        print("every window already harvested")
        return 0
    return _print(summaries, args.json)
