"""`sam2ct segment`: one CT series + its GSPS files -> DICOM SEGs, previews, catalog rows, JSON."""

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
    p.add_argument("--catalog", default=None,
                   help="catalog URL (default: SAM2CT_DATABASE_URL or the SQLite file in the "
                        "user data folder)")
    p.add_argument("--no-catalog", action="store_true", help="do not record in the catalog")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment, record, print one JSON document with a summary per segment; 1 if any input failed."""
    from db.records import SegStatus
    from dicom_io.volume import load_series
    from flows.segment_series import read_gsps_files, segment_series
    from flows.settings import Settings
    from sam2ct.registry import choose_segmenter

    settings = Settings()
    volume = load_series(args.series, args.series_uid)
    parsed, failures = read_gsps_files(args.gsps)
    choice = choose_segmenter(args.model or settings.model, device=args.device or settings.device)
    series_run = segment_series(volume, parsed, choice, args.out, failures)
    if series_run.warning:
        print(f"WARNING: {series_run.warning}", file=sys.stderr)
    if not args.no_catalog:
        _record(args.series, series_run, args.catalog or settings.catalog_url)
    segments = series_run.to_json()
    print(json.dumps({"series_instance_uid": volume.series_instance_uid,
                      "warning": series_run.warning, "segments": segments}, indent=2))
    failed = [s for s in segments if s["status"] == SegStatus.FAILED]
    for s in failed:
        print(f"sam2ct segment: failed: {s['reason']}", file=sys.stderr)
    return 1 if failed else 0


def _record(series_dir: Path, series_run, catalog_url: str) -> None:
    """Record the series, its GSPS, annotations, segmentations and failures (idempotent)."""
    from db import Recorder, open_catalog

    if catalog_url.startswith("sqlite:///"):
        Path(catalog_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(open_catalog(catalog_url))
    recorder.record_series_results(series_run.catalog_records(Path(series_dir)))
    for failure in series_run.failure_records():
        recorder.record_failure(failure)
