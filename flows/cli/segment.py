"""`sam2ct segment`: one CT series + its GSPS files -> DICOM SEGs, previews and a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    p = sub.add_parser("segment", help="segment a CT series from its GSPS arrows and lines")
    p.add_argument("--series", required=True, type=Path, help="folder (or file) of the CT series")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--gsps", required=True, nargs="+", type=Path, help="presentation state files")
    p.add_argument("--out", required=True, type=Path, help="output folder for SEGs and previews")
    p.add_argument("--model", default=None, help="auto | classical | PATH.pt (default: settings)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment, print one JSON document with a summary per segment, exit 1 if any input failed."""
    from dicom_io.volume import load_series
    from flows.pipeline import segment_series
    from flows.settings import Settings

    settings = Settings()
    volume = load_series(args.series, args.series_uid)
    results, warning = segment_series(volume, args.gsps, args.out, args.model or settings.model,
                                      args.device or settings.device)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    document = {"series_instance_uid": volume.series_instance_uid, "warning": warning,
                "segments": [r.to_json() for r in results]}
    print(json.dumps(document, indent=2))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"sam2ct segment: failed: {r.reason}", file=sys.stderr)
    return 1 if failed else 0
