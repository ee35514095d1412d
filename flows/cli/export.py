"""`sam2ct export`: catalog segmentations -> a training dataset (NIfTI, nnU-Net, MONAI, DICOM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli.bounds import SEED_MAX, bounded_int
from flows.cli.catalog import add_filter_arguments, filter_from_args
from flows.cli.db import open_cli_catalog
from flows.cli.terminal import add_progress_argument, advance, one_of, progress, shows_progress

#: Dataset layouts (db.export.ExportFormat, not imported for the parser: it loads the exporters).
FORMATS = ("nifti", "nnunet", "monai", "dicom")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = sub.add_parser("export", help="export catalogued segmentations as a dataset")
    p.add_argument("--out", required=True, type=Path, help="export folder (re-run to resume)")
    p.add_argument("--format", required=True, **one_of(FORMATS),
                   help=f"dataset layout, any case: {', '.join(FORMATS)}")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM: PS3.15 Basic Profile with consistent UID remapping; all formats: "
                        "no UIDs in the manifest")
    p.add_argument("--split", default="1", metavar="F[,F[,F]]",
                   help="train,val,test fractions by patient, e.g. 0.7,0.15,0.15 (default: 1)")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX),
                   default=0, help="seed of the patient split")
    p.add_argument("--nnunet-dataset", default="Dataset501_SAM2CT", metavar="DatasetNNN_Name",
                   help="nnU-Net: the dataset folder under OUT/nnUNet_raw and "
                        "OUT/nnUNet_preprocessed (default: Dataset501_SAM2CT)")
    p.add_argument("--force", action="store_true",
                   help="OUT was made with other filters or options: start it over (its old "
                        "cases are removed)")
    p.add_argument("--pixels-cleaned", action="store_true",
                   help="DICOM --deidentify: images marked BurnedInAnnotation YES had the "
                        "annotation removed from their pixels; export them (Clean Pixel Data "
                        "Option). Without it they are left out and counted")
    add_progress_argument(p)
    add_filter_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, print a JSON summary; exit 1 when a case failed (the others are written), 2 with
    one line when nothing was exported or OUT holds another export."""
    from db.export import ExportError, export_dataset
    from db.export.splits import parse_fractions
    from dicom_io.files import remove_stale_temps
    from flows.cli import CommandError

    split = parse_fractions(args.split)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"export folder {args.out} is a file")
    engine = open_cli_catalog(args.catalog, create=False)  # never creates one
    remove_stale_temps(args.out)  # what a killed export's writers left
    try:
        with progress(f"export {args.format}", unit="case",
                      show=shows_progress(args)) as bar:
            report = export_dataset(engine, args.out, args.format, filter_from_args(args),
                                    deidentify=args.deidentify, split=split, seed=args.seed,
                                    progress=advance(bar), force=args.force,
                                    nnunet_dataset=args.nnunet_dataset,
                                    pixels_cleaned=args.pixels_cleaned)
    except ExportError as e:
        raise CommandError(str(e)) from e
    finally:
        engine.dispose()
    print(json.dumps({"out": str(report.out), "cases": report.cases, "written": report.written,
                      "already_done": report.skipped_done, **report.figures,
                      "failed": report.failed}, indent=2))
    return 1 if report.failed else 0
