"""DICOM export: each case's CT and SEG files, copied or de-identified with one UID key."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from db.export.cases import Case
from db.export.manifest import ManifestRow
from dicom_io.deid import Deidentifier, UidMapper, deidentify_file
from dicom_io.files import atomic_path
from dicom_io.volume import Volume


class DicomLayout:
    """<case>/CT/<n>.dcm and <case>/SEG/<n>.dcm."""

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative CT and SEG folders of a case."""
        return f"{case_id}/CT", f"{case_id}/SEG"

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> None:
        """Nothing beyond the manifest."""


def write_case_files(case: Case, volume: Volume, ct_dir: Path, seg_dir: Path,
                     uids: UidMapper | None) -> None:
    """Copy (or de-identify, when ``uids`` is given) the case's CT slices and SEG files."""
    deid = Deidentifier(uids, pseudonym=case.patient_pseudonym) if uids is not None else None
    sources = sorted({src.path for src in volume.slices})
    seg_files = sorted({ref.seg_path for ref in case.segments})
    jobs = [(Path(p), ct_dir / f"{i:05d}.dcm") for i, p in enumerate(sources)]
    jobs += [(Path(p), seg_dir / f"{i:03d}.dcm") for i, p in enumerate(seg_files)]
    for source, target in jobs:
        if deid is not None:
            deidentify_file(source, target, deid)
        else:
            _copy(source, target)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
