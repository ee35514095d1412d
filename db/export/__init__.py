"""Dataset export from the catalog: NIfTI, nnU-Net v2, MONAI datalist, or (de-identified) DICOM.

Resumable: the manifest lists finished cases; re-running skips them and does the rest. A folder
remembers what it was made with (``export.json``) and refuses another selection unless forced.
Case ids and remapped UIDs come from the catalog's export key (``db.keys``): the same for every
export of a catalog, and never written into the dataset folder.

Example
-------
>>> export_dataset(engine, Path("out"), ExportFormat.NNUNET, CatalogFilter(kind="line"),
...                split=(0.8, 0.0, 0.2), seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from db.export.cases import Case, cases_from_rows
from db.export.dicom import DicomLayout
from db.export.errors import ExportError
from db.export.layout import Layout
from db.export.manifest import MANIFEST_NAME, Manifest, ManifestRow
from db.export.monai import MonaiLayout
from db.export.nifti import NiftiLayout
from db.export.nnunet import DEFAULT_DATASET, NnUNetLayout
from db.export.spec import SPEC_NAME, ExportSpec, read_spec
from db.export.splits import assign_splits
from db.export.volumes import (
    check_sources,
    ct_as_int16,
    load_case_volume,
    read_label,
    write_nifti,
)
from db.keys import EXPORT_KEY, catalog_key
from db.queries import CatalogFilter, query_rows
from dicom_io.deid import UidMapper
from dicom_io.errors import DicomInputError

__all__ = ["ExportError", "ExportFormat", "ExportReport", "export_dataset"]

log = logging.getLogger(__name__)
#: A progress callback: (cases handled, cases).
Progress = Callable[[int, int], None]

# What older versions kept in the folder (a per-folder key, loose index files): removed by force.
_LEGACY_FILES = (".export-state/key", "dataset.json", "splits_final.json")


class ExportFormat(enum.StrEnum):
    """Dataset layouts the export writes."""

    NIFTI = "nifti"
    NNUNET = "nnunet"
    MONAI = "monai"
    DICOM = "dicom"


@dataclass
class ExportReport:
    """What one export call did."""

    out: Path
    cases: int = 0
    written: int = 0
    skipped_done: int = 0
    failed: list[str] = field(default_factory=list)  # "case_id: reason"
    figures: dict[str, int] = field(default_factory=dict)  # the layout's, e.g. {"folds": 5}


def make_layout(fmt: ExportFormat | str, nnunet_dataset: str | None = None,
                seed: int = 0, pixels_cleaned: bool = False) -> Layout:
    """The layout object of a format (nnU-Net: its dataset folder name and fold seed; DICOM:
    whether images with burned-in annotation are stated cleaned)."""
    fmt = ExportFormat(fmt)
    if fmt is ExportFormat.NNUNET:
        return NnUNetLayout(nnunet_dataset or DEFAULT_DATASET, seed)
    if fmt is ExportFormat.DICOM:
        return DicomLayout(pixels_cleaned)
    return {ExportFormat.NIFTI: NiftiLayout, ExportFormat.MONAI: MonaiLayout,
            ExportFormat.DICOM: DicomLayout}[fmt]()


def export_dataset(engine: Engine, out: Path, fmt: ExportFormat | str,
                   where: CatalogFilter | None = None, *, deidentify: bool = False,
                   split: Sequence[float] = (1.0,), seed: int = 0, progress: Progress | None = None,
                   max_cases: int | None = None, force: bool = False,
                   nnunet_dataset: str = DEFAULT_DATASET,
                   pixels_cleaned: bool = False) -> ExportReport:
    """Export the segmentations matching ``where`` into ``out`` as ``fmt``.

    One case per CT series (label 1 = union of its segments). ``split`` fractions assign whole
    patients to train / val / test, deterministically for a seed. ``max_cases`` stops after that
    many newly written cases (a partial export that a later call completes). ``force`` starts
    a folder made with other settings over (its old cases are removed). De-identified DICOM
    leaves images with burned-in annotation out (counted: ``figures["burned_in_left_out"]``)
    unless ``pixels_cleaned`` states their pixels were cleaned. ``progress`` (optional)
    is called with (cases handled, cases) after each case, e.g. to move a progress bar.

    Raises
    ------
    ExportError
        Nothing matches ``where``; ``out`` holds an export made with other settings (and not
        ``force``); or no case could be written (each case's reason is in the message's count).
    """
    fmt = ExportFormat(fmt)
    out, where = Path(out), where or CatalogFilter()
    layout = make_layout(fmt, nnunet_dataset, seed, pixels_cleaned)
    spec = ExportSpec.of(fmt.value, where, split, seed, deidentify,
                         nnunet_dataset if fmt is ExportFormat.NNUNET else None, pixels_cleaned)
    key = bytes.fromhex(catalog_key(engine, EXPORT_KEY))
    cases = cases_from_rows(query_rows(engine, where), key)
    if not cases:
        raise ExportError("no catalogued segmentation matches the filters: nothing to export")
    if force:
        _start_over(out)
    spec.check(out)
    spec.write(out)
    report = _export_cases(cases, out, fmt, layout, split, seed, progress, max_cases,
                           UidMapper(key) if deidentify else None)
    if not report.written and not report.skipped_done:
        first = report.failed[0] if report.failed else "stopped before the first case"
        raise ExportError(f"no case exported to {out}: {len(report.failed)} of {report.cases} "
                          f"failed; first: {first}")
    return report


def _export_cases(cases: Sequence[Case], out: Path, fmt: ExportFormat, layout: Layout,
                  split: Sequence[float], seed: int, progress: Progress | None, max_cases: int | None,
                  uids: UidMapper | None) -> ExportReport:
    """Write the cases not yet done; record each in the manifest, then the index files."""
    splits = assign_splits((c.patient_pseudonym for c in cases), split, seed)
    manifest = Manifest(out)
    report = ExportReport(out, cases=len(cases))
    for case in _reporting(cases, progress):
        if manifest.done(case.case_id, out):
            report.skipped_done += 1
            continue
        if max_cases is not None and report.written >= max_cases:
            break
        try:
            row = _export_case(case, splits[case.patient_pseudonym], fmt, layout, out, uids)
        except (DicomInputError, ValueError, OSError) as e:
            log.warning("export of %s failed: %s", case.case_id, e)
            report.failed.append(f"{case.case_id}: {e}")
            continue
        manifest.add(row)
        report.written += 1
    if manifest.rows:
        report.figures = layout.finalize(out, list(manifest.rows.values())) or {}
    return report


def _reporting(cases: Sequence[Case], progress: Progress | None) -> Iterator[Case]:
    """``cases`` in order; ``progress(handled, total)`` after each one is handled."""
    for handled, case in enumerate(cases, start=1):
        yield case
        if progress:
            progress(handled, len(cases))


def _export_case(case: Case, split: str, fmt: ExportFormat, layout: Layout, out: Path,
                 uids: UidMapper | None) -> ManifestRow:
    """Write one case's files and return its manifest row."""
    check_sources(case)
    volume = load_case_volume(case)
    label = read_label(volume, case.segments)
    image_rel, label_rel = layout.paths(case.case_id, split)
    if isinstance(layout, DicomLayout):
        layout.write_files(case, volume, out / image_rel, out / label_rel, uids)
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


def _start_over(out: Path) -> None:
    """Remove what an earlier export wrote into ``out``: the files its manifest lists, its index
    files, its spec and manifest, then the folders left empty. Other files stay."""
    stored = read_spec(out) if out.is_dir() else None
    if stored is None and not (out / MANIFEST_NAME).exists():
        return
    old_layout = make_layout(stored["format"], stored.get("nnunet_dataset")) if stored else None
    paths = [p for row in Manifest(out).rows.values() for p in (row.image, row.label) if p]
    paths += list(getattr(old_layout, "index_files", ())) + list(_LEGACY_FILES)
    paths += [MANIFEST_NAME, SPEC_NAME]
    for relative in paths:
        path = out / relative
        if not path.resolve().is_relative_to(out.resolve()):
            continue  # a manifest edited by hand: never delete outside the folder
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for folder, _, _ in sorted(os.walk(out), key=lambda w: -len(w[0])):
        if Path(folder) != out and not os.listdir(folder):
            os.rmdir(folder)
