"""`sam2ct segment`: one CT series + its GSPS files -> DICOM SEGs, previews, catalog rows, JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dicom_io.printable import printable
from flows.cli.db import add_catalog_argument, open_cli_catalog
from flows.cli.terminal import add_progress_argument, progress, shows_progress, step


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    p = sub.add_parser("segment", help="segment a CT series from its GSPS arrows and lines")
    p.add_argument("--series", required=True, type=Path, help="folder (or file) of the CT series")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--gsps", required=True, nargs="+", type=Path, help="presentation state files")
    p.add_argument("--out", required=True, type=Path, help="output folder for SEGs and previews")
    p.add_argument("--model", default=None, help="auto | classical | PATH.pt (default: settings)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu")
    add_catalog_argument(p)
    p.add_argument("--no-catalog", action="store_true", help="do not record in the catalog")
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment, record, print one JSON document with a summary per segment; 1 if any input failed.

    The catalog is opened first (a bad one fails before anything is written); temporary files a
    killed run left in ``--out`` are removed. Paths are made absolute first: the catalog records
    them, and an export reads them from any folder.
    """
    from db.records import SegStatus
    from dicom_io.files import remove_stale_temps
    from dicom_io.volume import load_series
    from flows.segment_series import read_gsps_files, segment_series
    from flows.settings import Settings
    from sam2ct.registry import choose_segmenter

    args.series, args.out = args.series.resolve(), args.out.resolve()
    args.gsps = [p.resolve() for p in args.gsps]
    settings = Settings()
    engine = None if args.no_catalog else open_cli_catalog(args.catalog, create=True)
    remove_stale_temps(args.out)
    show = shows_progress(args)
    with step("reading the series", show):
        volume = load_series(args.series, args.series_uid)
    parsed, failures = read_gsps_files(args.gsps)
    with step("loading the model", show):
        choice = choose_segmenter(args.model or settings.model,
                                  device=args.device or settings.device)
    with progress("segment", total=len(parsed), unit="GSPS", show=show) as bar:
        series_run = segment_series(volume, parsed, choice, args.out, failures,
                                    on_progress=lambda gsps: bar.update())
    if series_run.warning:
        print(f"WARNING: {printable(series_run.warning)}", file=sys.stderr)
    if engine is not None:
        _record(engine, args.series, series_run)
        engine.dispose()
    segments = series_run.to_json()
    print(json.dumps({"series_instance_uid": volume.series_instance_uid,
                      "warning": series_run.warning, "segments": segments}, indent=2))
    failed = [s for s in segments if s["status"] == SegStatus.FAILED]
    for s in failed:
        print(f"sam2ct segment: failed: {printable(s['reason'])}", file=sys.stderr)
    return 1 if failed else 0


def _record(engine, series_dir: Path, series_run) -> None:
    """Record the series, its GSPS, annotations, segmentations and failures (idempotent)."""
    from db import Recorder

    recorder = Recorder(engine)
    recorder.record_series_results(series_run.catalog_records(Path(series_dir)))
    for failure in series_run.failure_records():
        recorder.record_failure(failure)
