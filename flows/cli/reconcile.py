"""`sam2ct reconcile`: re-count past windows on the PACS against the catalog, harvest what is missing.

Takes the flags of ``sam2ct harvest`` (the same options) and ``--chunk-days``.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``reconcile`` sub-command."""
    from flows.cli.bounds import bounded_int
    from flows.cli.harvest import add_harvest_flags

    p = sub.add_parser("reconcile", help="re-count past windows on the PACS against the "
                                         "catalog; harvest what is missing")
    add_harvest_flags(p)
    p.add_argument("--chunk-days", type=bounded_int(1, 3660), default=1, help="days per window (default 1)")
    p.set_defaults(func=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    """Run the ``reconcile`` flow over ``--from..--to``; exit 1 when a window is still short
    (its discovery failed or did not add up, or its harvest had failures)."""
    from flows.cli.harvest import checked_options, quiet_libraries

    if args.end < args.start:
        raise ValueError(f"--to {args.end} is before --from {args.start}")
    # before Prefect is imported: a bad catalog is one line; it must exist (nothing to re-count)
    opts = checked_options(args, create=False)
    from flows.reconcile import reconcile

    quiet_libraries()
    checks = reconcile(args.start, args.end, chunk_days=args.chunk_days, options=opts)
    if args.json:
        print(json.dumps(checks, indent=2, default=str))
    else:
        for c in checks:
            print(_line(c))
    return 0 if all(_settled(c) for c in checks) else 1


def _line(check: dict) -> str:
    window = f"{check['window_start']}..{check['window_end']}"
    if check["error"]:
        return f"{window}: discovery failed: {check['error']}"
    head = (f"{window}: found {check['found']}, missing {check['missing']}, "
            f"C-FINDs {check['queries']}")
    if check["clean"]:
        return f"{head}: clean"
    h = check["harvest"]
    short = "" if check["complete"] else " (discovery did not add up)"
    return (f"{head}{short}: harvested, segmented {h['segmented']}, failed {h['failed']}")


def _settled(check: dict) -> bool:
    """Nothing left to redo: clean, or harvested without a failure."""
    return check["clean"] or (check["harvest"] is not None and not check["harvest"]["failed"])
