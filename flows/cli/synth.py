"""`sam2ct synth OUT --studies N --seed S`: synthetic CT studies with GSPS and truth masks."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from flows.cli.bounds import SEED_MAX, bounded_int
from flows.cli.terminal import iso_date


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = sub.add_parser("synth", help="write synthetic CT studies + GSPS + truth masks (NIfTI)")
    p.add_argument("out", type=Path, help="output folder (gets <study>/ct, gsps, truth, manifest)")
    p.add_argument("--studies", type=bounded_int(1, 10_000),
                   default=1, help="number of studies (default 1)")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX),
                   default=0, help="random seed: same seed, same bytes")
    p.add_argument("--size", type=bounded_int(64, 1024),
                   default=512, help="rows = columns per slice (64..1024)")
    p.add_argument("--slices", type=bounded_int(8, 4096), default=None,
                   help="slices per series (default: 180-240 mm of coverage)")
    p.add_argument("--start-date", type=iso_date, default=dt.date(2026, 1, 5),
                   help="StudyDate of the first study, YYYY-MM-DD; study i is i days later")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Make the studies and say where the manifest is."""
    from dicom_io.synth import make_studies

    manifest = make_studies(args.out, studies=args.studies, seed=args.seed, size=args.size,
                            slices=args.slices, start_date=args.start_date)
    data = json.loads(manifest.read_text())
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lesions = sum(len(s["lesions"]) for s in data["studies"])
    gsps = sum(len(s["gsps"]) for s in data["studies"])
    print(f"{len(data['studies'])} studies, {lesions} lesions, {gsps} GSPS; manifest: {manifest}")
    return 0
