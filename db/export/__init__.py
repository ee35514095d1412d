"""Dataset export from the catalog: NIfTI, nnU-Net v2, MONAI datalist, or (de-identified) DICOM.

Resumable: the manifest lists finished cases; re-running skips them and does the rest.

Example
-------
>>> export_dataset(engine, Path("out"), ExportFormat.NNUNET, CatalogFilter(kind="line"),
...                split=(0.7, 0.15, 0.15), seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from tqdm import tqdm

from db.export.cases import Case, cases_from_rows
from db.export.dicom import DicomLayout, write_case_files
from db.export.layout import Layout
from db.export.manifest import Manifest, ManifestRow
from db.export.monai import MonaiLayout
from db.export.nifti import NiftiLayout
from db.export.nnunet import NnUNetLayout
from db.export.splits import assign_splits
from db.export.volumes import ct_as_int16, load_case_volume, read_label, write_nifti
from db.queries import CatalogFilter, query_rows
from dicom_io.deid import UidMapper
from dicom_io.errors import DicomInputError

__all__ = ["ExportFormat", "ExportReport", "export_dataset"]

log = logging.getLogger(__name__)

# Export state kept beside the data (remove before sharing): the key behind case ids and UIDs.
STATE_DIR = ".export-state"


class ExportFormat(enum.StrEnum):
    """Dataset layouts the export writes."""

    NIFTI = "nifti"
    NNUNET = "nnunet"
    MONAI = "monai"
    DICOM = "dicom"


_LAYOUTS: dict[ExportFormat, type[Layout]] = {ExportFormat.NIFTI: NiftiLayout, ExportFormat.NNUNET: NnUNetLayout,
            ExportFormat.MONAI: MonaiLayout, ExportFormat.DICOM: DicomLayout}


@dataclass
class ExportReport:
    """What one export call did."""

    out: Path
    cases: int = 0
    written: int = 0
    skipped_done: int = 0
    failed: list[str] = field(default_factory=list)  # "case_id: reason"


def export_dataset(engine: Engine, out: Path, fmt: ExportFormat | str,
                   where: CatalogFilter | None = None, *, deidentify: bool = False,
                   split: Sequence[float] = (1.0,), seed: int = 0, progress: bool = True,
                   max_cases: int | None = None) -> ExportReport:
    """Export the segmentations matching ``where`` into ``out`` as ``fmt``.

    One case per CT series (label 1 = union of its segments). ``split`` fractions assign whole
    patients to train / val / test, deterministically for a seed. ``max_cases`` stops after that
    many newly written cases (a partial export that a later call completes).
    """
    fmt = ExportFormat(fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = UidMapper.from_file(out / STATE_DIR / "key")
    cases = cases_from_rows(query_rows(engine, where or CatalogFilter()), key.key)
    splits = assign_splits((c.patient_pseudonym for c in cases), split, seed)
    layout, manifest = _LAYOUTS[fmt](), Manifest(out)
    report = ExportReport(out, cases=len(cases))
    for case in tqdm(cases, desc=f"export {fmt.value}", unit="case", file=sys.stderr,
                     disable=not progress):
        if manifest.done(case.case_id, out):
            report.skipped_done += 1
            continue
        if max_cases is not None and report.written >= max_cases:
            break
        try:
            row = _export_case(case, splits[case.patient_pseudonym], fmt, layout, out,
                               key if deidentify else None)
        except (DicomInputError, ValueError, OSError) as e:
            log.warning("export of %s failed: %s", case.case_id, e)
            report.failed.append(f"{case.case_id}: {e}")
            continue
        manifest.add(row)
        report.written += 1
    layout.finalize(out, list(manifest.rows.values()))
    return report


def _export_case(case: Case, split: str, fmt: ExportFormat, layout: Layout, out: Path,
                 uids: UidMapper | None) -> ManifestRow:
    """Write one case's files and return its manifest row."""
    volume = load_case_volume(case)
    label = read_label(volume, case.segments)
    image_rel, label_rel = layout.paths(case.case_id, split)
    if fmt is ExportFormat.DICOM:
        write_case_files(case, volume, out / image_rel, out / label_rel, uids)
    else:
        write_nifti(label, volume, out / label_rel)
        write_nifti(ct_as_int16(volume), volume, out / image_rel)
    identified = uids is None
    return ManifestRow(
        case_id=case.case_id, split=split, patient=case.patient_pseudonym, image=image_rel,
        label=label_rel, segmentation_ids=";".join(str(s.segmentation_id) for s in case.segments),
        label_voxels=int(label.sum()),
        study_instance_uid=case.study_instance_uid if identified else "",
        series_instance_uid=case.series_instance_uid if identified else "")
