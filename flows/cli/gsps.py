"""`sam2ct gsps inspect FILE... [--json] [--image IMAGE...]`: the annotations of GSPS files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_io.errors import DicomInputError
from dicom_io.gsps import Annotation, annotations_of, read_presentation_state
from dicom_io.printable import printable


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `gsps` sub-command and its `inspect` action."""
    parser = sub.add_parser("gsps", help="read GSPS (presentation state) annotations")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="list the annotations parsed from GSPS files")
    inspect.add_argument("files", nargs="+", type=Path, metavar="FILE", help="GSPS files")
    inspect.add_argument("--json", action="store_true", help="one JSON document on stdout")
    inspect.add_argument(
        "--image", action="append", type=Path, default=[], metavar="IMAGE",
        help="a referenced image (repeatable): mm from its PixelSpacing, bounds from its size",
    )
    inspect.set_defaults(func=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    """Print each file's annotations; one error line per unreadable or non-PR file (exit 2)."""
    images = _read_images(args.image) if args.image else None
    results: list[dict[str, Any]] = []
    failed = 0
    for path in args.files:
        try:
            ds = read_presentation_state(path)
        except DicomInputError as e:
            print(f"sam2ct gsps: error: {printable(e)}", file=sys.stderr)
            failed += 1
            continue
        results.append(_file_result(path, ds, annotations_of(ds, path, images)))
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(results)
    return 2 if failed else 0


def _read_images(paths: list[Path]) -> list[Dataset]:
    """Headers of the referenced images given with --image."""
    images = []
    for path in paths:
        try:
            images.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError) as e:
            raise DicomInputError(f"image file {path} - cannot be read as DICOM: {e}") from e
    return images


def _file_result(path: Path, ds: Dataset, annotations: list[Annotation]) -> dict[str, Any]:
    """One file's JSON object."""
    return {
        "file": str(path),
        "gsps_sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "annotations": [a.to_dict() for a in annotations],
    }


def _print_table(results: list[dict[str, Any]]) -> None:
    """A readable table: one header line per file, one row per annotation; every text from the
    file escaped (``printable``), so a control character in it cannot repaint the terminal."""
    for result in results:
        count = len(result["annotations"])
        print(f"{printable(result['file'])}  GSPS {printable(result['gsps_sop_instance_uid'])}  "
              f"{count} annotation(s)")
        if not count:
            continue
        print(f"  {'#':>3}  {'kind':<13} {'mm':>7}  {'image (frame)':<28} {'layer':<14} "
              "points / text / skip")
        for a in result["annotations"]:
            length = "" if a["length_mm"] is None else f"{a['length_mm']:.1f}"
            ref = printable(_short_uid(a["referenced_sop_instance_uid"]))
            if a["referenced_frame"] is not None:
                ref += f" ({a['referenced_frame']})"
            print(f"  {a['index']:>3}  {printable(a['kind']):<13} {length:>7}  {ref:<28} "
                  f"{printable(a['layer'], 14):<14} {_points_text(a['points'])}")
            text = " / ".join(line.strip() for line in a["text"].splitlines() if line.strip())
            if text:
                print(f"{'':>7}text: {printable(text, 90)}")
            if a["skip_reason"]:
                print(f"{'':>7}SKIPPED: {printable(a['skip_reason'])}")


def _short_uid(uid: str | None) -> str:
    """The end of a UID, enough to tell images apart in a table."""
    if not uid:
        return "-"
    return uid if len(uid) <= 28 else "..." + uid[-25:]


def _points_text(points: list[list[float | None]]) -> str:
    """Points as (column,row) pairs, shortened for long outlines."""
    def fmt(p: list[float | None]) -> str:
        return "(" + ",".join("nan" if v is None else f"{v:.1f}" for v in p) + ")"

    if len(points) <= 4:
        return " ".join(fmt(p) for p in points)
    return f"{fmt(points[0])} ... {fmt(points[-1])} [{len(points)} points]"
