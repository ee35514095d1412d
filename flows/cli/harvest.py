"""`sam2ct harvest` and `sam2ct backfill`: run the harvest flows now (both registered here).

Without PREFECT_API_URL the flows run on Prefect's local mode (a temporary local server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

#: Libraries that log every request or identifier at INFO: kept at WARNING unless --verbose.
NOISY = ("pynetdicom", "httpx", "prefect", "alembic")


def quiet_libraries() -> None:
    """Keep chatty libraries' INFO lines (identifiers, HTTP calls) off stderr unless debugging."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from e


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", required=True, type=_date, help="first study date")
    p.add_argument("--to", dest="end", required=True, type=_date, help="last study date")
    p.add_argument("--pacs", help="AET@host:port (default: SAM2CT_PACS)")
    p.add_argument("--catalog", help="catalog URL (default: SAM2CT_DATABASE_URL or SQLite)")
    p.add_argument("--staging", type=Path, help="staging folder (default: <data dir>/staging)")
    p.add_argument("--out", type=Path, help="SEG output folder (default: <data dir>/seg)")
    p.add_argument("--model", help="auto | classical | PATH.pt (default: settings)")
    p.add_argument("--max-associations", type=int, help="PACS associations at once (default 2)")
    p.add_argument("--harvest-window", metavar="HH:MM-HH:MM",
                   help="talk to the PACS only in this daily window, e.g. 19:00-07:00 "
                        "(default: SAM2CT_HARVEST_WINDOW, none)")
    p.add_argument("--store-back", action="store_true", help="C-STORE the SEGs to the PACS")
    p.add_argument("--segment-deployment", help="run segmentation on this deployment (GPU pool)")
    p.add_argument("--segment-workers", type=int, metavar="N",
                   help="segment in N worker processes (0: in the flow's process; default: "
                        "SAM2CT_SEGMENT_WORKERS, else one per core up to 4, one on a GPU)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``harvest`` and ``backfill`` sub-commands."""
    p = sub.add_parser("harvest", help="harvest one window of study dates now")
    _common(p)
    p.set_defaults(func=run_harvest)
    b = sub.add_parser("backfill", help="harvest a long range window by window, resumable")
    _common(b)
    b.add_argument("--chunk-days", type=int, default=7, help="days per window (default 7)")
    b.set_defaults(func=run_backfill)


def options_from(args: argparse.Namespace):
    """HarvestOptions from Settings and the flags given."""
    from dicom_io.pacs import HarvestWindow
    from flows.options import HarvestOptions
    from flows.settings import Settings

    if args.harvest_window:  # one clear line, not pydantic's report
        HarvestWindow.parse(args.harvest_window)
    overrides = {"pacs": args.pacs, "catalog_url": args.catalog, "staging_dir": args.staging,
                 "output_dir": args.out, "model": args.model,
                 "max_associations": args.max_associations,
                 "segment_deployment": args.segment_deployment,
                 "segment_workers": args.segment_workers,
                 "harvest_window": args.harvest_window,
                 "store_back": args.store_back or None}
    return HarvestOptions.from_settings(Settings(), **{k: v for k, v in overrides.items()
                                                       if v is not None})


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
        print(f"WARNING: {next(s['warning'] for s in summaries if s['warning'])}",
              file=sys.stderr)
    return 1 if any(s["failed"] for s in summaries) else 0


def run_harvest(args: argparse.Namespace) -> int:
    """Run ``nightly_harvest`` over ``--from..--to``; exit 1 when anything failed."""
    from flows.harvest import nightly_harvest

    quiet_libraries()
    if args.end < args.start:
        raise ValueError(f"--to {args.end} is before --from {args.start}")
    return _print([nightly_harvest(args.start, args.end, options_from(args))], args.json)


def run_backfill(args: argparse.Namespace) -> int:
    """Run ``backfill`` over ``--from..--to`` in ``--chunk-days`` windows."""
    from flows.harvest import backfill

    quiet_libraries()
    if args.chunk_days < 1:
        raise ValueError(f"--chunk-days {args.chunk_days} must be at least 1")
    summaries = backfill(args.start, args.end, args.chunk_days, options_from(args))
    if not summaries:
        print("every window already harvested")
        return 0
    return _print(summaries, args.json)
