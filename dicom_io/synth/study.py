"""One synthetic study on disk: CT series, one GSPS per (encoding, lesion), NIfTI truth masks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from dicom_io.nifti import write_nifti
from dicom_io.synth.ct_writer import SCANNERS, StudyInfo, save, write_ct_series
from dicom_io.synth.gsps_writer import (
    ARROW_ENCODINGS,
    ENCODERS,
    EXPECTED_KINDS,
    LINE_ENCODINGS,
    REGION_ENCODINGS,
    Encoding,
    GspsIdentity,
    ImageRef,
    gsps_dataset,
)
from dicom_io.synth.measure import Marks, marks
from dicom_io.synth.phantom import Grid, Phantom, make_phantom

SLICE_SPACINGS = (2.0, 2.5, 3.0, 5.0)


@dataclass(frozen=True)
class StudySpec:
    """What to make: the study's position in the batch, the batch seed and the image size."""

    index: int  # 0-based
    seed: int
    size: int
    slices: int | None
    study_date: dt.date

    @property
    def name(self) -> str:
        return f"study-{self.index + 1:03d}"

    def uid(self, *role: object) -> str:
        """A UID that depends only on (seed, study, role): same seed, same UIDs."""
        return generate_uid(entropy_srcs=["sam2ct-synth", str(self.seed), str(self.index),
                                          *map(str, role)])


def _grid(spec: StudySpec, rng: np.random.Generator) -> Grid:
    """Square slices of ``size`` pixels over a 360-460 mm field of view, 2-5 mm apart."""
    pixel = round(float(rng.uniform(360.0, 460.0)) / spec.size, 4)
    spacing = float(SLICE_SPACINGS[int(rng.integers(len(SLICE_SPACINGS)))])
    slices = spec.slices or max(16, int(round(rng.uniform(180.0, 240.0) / spacing)))
    half = (spec.size - 1) / 2 * pixel
    origin = (round(-half + float(rng.uniform(-10, 10)), 3),
              round(-half + float(rng.uniform(-30, 10)), 3),
              round(float(rng.uniform(-450.0, -150.0)), 3))
    return Grid(spec.size, spec.size, slices, pixel, spacing, origin)


def _info(spec: StudySpec, rng: np.random.Generator) -> StudyInfo:
    n = spec.index + 1
    return StudyInfo(
        patient_name=f"SYNTH^PATIENT{n:03d}", patient_id=f"SYN{n:03d}",
        patient_sex=str(rng.choice(["F", "M"])), patient_age=f"{int(rng.integers(35, 86)):03d}Y",
        study_instance_uid=spec.uid("study"), study_date=spec.study_date.strftime("%Y%m%d"),
        study_time=f"{8 + spec.index % 10:02d}{(spec.index * 7) % 60:02d}00",
        accession_number=f"SA{spec.seed % 10000:04d}{n:04d}", study_id=str(n),
        scanner=SCANNERS[(spec.seed + spec.index) % len(SCANNERS)],
        series_instance_uid=spec.uid("ct-series"), frame_of_reference_uid=spec.uid("frame"))


def _assignments(n_lesions: int) -> list[tuple[Encoding, int]]:
    """(encoding, lesion index) pairs: every encoding once, every lesion a line and an arrow."""
    pairs = []
    for group in (LINE_ENCODINGS, ARROW_ENCODINGS):
        for j in range(max(len(group), n_lesions)):
            pairs.append((group[j % len(group)], j % n_lesions))
    pairs += [(enc, j % n_lesions) for j, enc in enumerate(REGION_ENCODINGS)]
    return pairs


def _write_gsps(spec: StudySpec, info: StudyInfo, phantom: Phantom, lesion_marks: list[Marks],
                sop_uids: list[str], out: Path, root: Path) -> list[dict]:
    """Write every GSPS of the study; return their manifest entries."""
    entries = []
    grid = phantom.grid
    for number, (encoding, li) in enumerate(_assignments(len(phantom.lesions)), start=1):
        lesion, mk = phantom.lesions[li], lesion_marks[li]
        image = ImageRef(sop_uids[mk.slice_index], grid.rows, grid.columns, grid.pixel_spacing)
        drawing = ENCODERS[encoding](mk, image)
        identity = GspsIdentity(spec.uid("pr-series"), spec.uid("pr", number), number, encoding)
        path = save(gsps_dataset(drawing, image, info, identity),
                    out / "gsps" / f"{encoding.value}-{lesion.id}.dcm")
        entries.append({
            "file": path.relative_to(root).as_posix(),
            "sop_instance_uid": identity.sop_instance_uid,
            "encoding": encoding.value,
            "lesion": lesion.id,
            "expected_kinds": list(EXPECTED_KINDS[encoding]),
            "referenced_sop_instance_uid": image.sop_instance_uid,
            "slice_index": mk.slice_index,
            "points": np.round(drawing.points, 4).tolist(),
            "length_mm": None if drawing.length_mm is None else round(drawing.length_mm, 3),
        })
    return entries


def make_study(root: Path, spec: StudySpec) -> dict:
    """Render, write and describe one study under ``root/<name>``; returns its manifest entry."""
    rng = np.random.default_rng([spec.seed, spec.index])
    grid = _grid(spec, rng)
    info = _info(spec, rng)
    phantom = make_phantom(grid, rng, lesion_count=int(rng.integers(2, 5)))
    if not phantom.lesions:
        raise ValueError(f"{spec.name}: no lesion fits a {grid.shape} grid - use more slices")
    out = root / spec.name
    sop_uids = [spec.uid("ct", k) for k in range(grid.slices)]
    write_ct_series(phantom.hu, grid, info, sop_uids, out / "ct")
    lesions, lesion_marks = [], []
    for lesion in phantom.lesions:
        mask = lesion.full_mask(grid.shape)
        mk = marks(mask, rng, float(rng.uniform(15.0, 35.0)) / grid.pixel_spacing)
        lesion_marks.append(mk)
        truth = write_nifti(mask, grid.affine, out / "truth" / f"{lesion.id}.nii.gz")
        long_px = float(np.linalg.norm(mk.long_axis[1] - mk.long_axis[0]))
        short_px = float(np.linalg.norm(mk.short_axis[1] - mk.short_axis[0]))
        lesions.append({
            "id": lesion.id, "organ": lesion.organ.value, "diameter_mm": lesion.diameter_mm,
            "mean_hu": lesion.mean_hu, "slice_index": mk.slice_index,
            "truth": truth.relative_to(root).as_posix(),
            "long_axis_mm": round(long_px * grid.pixel_spacing, 3),
            "short_axis_mm": round(short_px * grid.pixel_spacing, 3),
            "volume_ml": round(float(lesion.mask.sum()) * grid.pixel_spacing ** 2
                               * grid.slice_spacing / 1000.0, 4),
        })
    return {
        "name": spec.name, "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid, "study_date": info.study_date,
        "ct_dir": (out / "ct").relative_to(root).as_posix(), "slices": grid.slices,
        "rows": grid.rows, "columns": grid.columns,
        "pixel_spacing_mm": grid.pixel_spacing, "slice_spacing_mm": grid.slice_spacing,
        "manufacturer": info.scanner.manufacturer,
        "lesions": lesions,
        "gsps": _write_gsps(spec, info, phantom, lesion_marks, sop_uids, out, root),
    }
