"""Synthetic CT studies with radiologist-style GSPS and true lesion masks, deterministic per seed.

Layout written by ``make_studies(out, ...)``::

    out/study-001/ct/*.dcm        CT Image series (one file per slice)
    out/study-001/gsps/*.dcm      one GSPS per (encoding, lesion), see ``Encoding``
    out/study-001/truth/L1.nii.gz one uint8 mask per lesion on the CT grid
    out/manifest.json             what was made, paths relative to ``out``

Manifest entries carry, besides the documented keys, per study ``pixel_spacing_mm``,
``slice_spacing_mm`` and ``manufacturer``; per lesion ``long_axis_mm``, ``short_axis_mm`` and
``volume_ml``; per GSPS ``slice_index``, ``points`` (the intended drawing in PIXEL (column, row):
arrows tip then tail, lines two ends, bidirectional long then short ends, ellipse major then minor
ends, circle centre then rim) and ``length_mm`` (lines, else null). ``annotate_image`` draws the
same encodings over any real CT image from a 2D mask.

Example
-------
>>> manifest = make_studies(Path("synth"), studies=2, seed=7, size=192)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from dicom_io.files import write_text_atomic
from dicom_io.synth.annotate import annotate_image
from dicom_io.synth.gsps_writer import EXPECTED_KINDS, Encoding
from dicom_io.synth.study import StudySpec, make_study

__all__ = ["EXPECTED_KINDS", "Encoding", "annotate_image", "make_studies"]


def make_studies(out: Path, studies: int, seed: int, size: int = 512, slices: int | None = None,
                 start_date: dt.date = dt.date(2026, 1, 5)) -> Path:
    """Write ``studies`` synthetic studies under ``out``; return the manifest path.

    Study ``i`` (0-based) is dated ``start_date + i days``. The same arguments give byte-identical
    files. ``slices`` defaults to 180-240 mm of coverage at the study's slice spacing.
    """
    if studies < 1:
        raise ValueError(f"Invalid 'studies' value {studies} - must be at least 1")
    if not 64 <= size <= 1024:
        raise ValueError(f"Invalid 'size' value {size} - must be 64..1024 pixels")
    if slices is not None and slices < 8:
        raise ValueError(f"Invalid 'slices' value {slices} - must be at least 8")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [make_study(out, StudySpec(i, seed, size, slices, start_date + dt.timedelta(days=i)))
               for i in range(studies)]
    manifest = out / "manifest.json"
    return write_text_atomic(manifest, json.dumps({"seed": seed, "studies": entries},
                                                  indent=2) + "\n")
