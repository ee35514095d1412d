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
    from dicom_io.volume import load_series
    from flows.pipeline import segment_series
    from flows.settings import Settings

    settings = Settings()
    volume = load_series(args.series, args.series_uid)
    series_run = segment_series(volume, args.gsps, args.out, args.model or settings.model,
                                args.device or settings.device)
    if series_run.warning:
        print(f"WARNING: {series_run.warning}", file=sys.stderr)
    if not args.no_catalog:
        _record(volume, args.series, series_run, args.catalog or settings.catalog_url)
    document = {"series_instance_uid": volume.series_instance_uid, "warning": series_run.warning,
                "segments": [r.to_json() for r in series_run.results]}
    print(json.dumps(document, indent=2))
    failed = [r for r in series_run.results if r.status == "failed"]
    for r in failed:
        print(f"sam2ct segment: failed: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def _record(volume, series_dir: Path, series_run, catalog_url: str) -> None:
    """Record the series, its GSPS, annotations, segmentations and failures (idempotent)."""
    from db import Recorder, open_catalog
    from db.records import FailureRecord, Stage
    from flows.recording import build_series_results

    if catalog_url.startswith("sqlite:///"):
        Path(catalog_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(open_catalog(catalog_url))
    recorder.record_series_results(build_series_results(
        volume, Path(series_dir), series_run.parsed, series_run.results, series_run.algorithm))
    for r in series_run.results:
        if r.annotation_index < 0:  # the GSPS file itself was unusable
            recorder.record_failure(FailureRecord(Stage.PARSE, Path(r.gsps_file).name,
                                                  "DicomInputError", r.reason or ""))
