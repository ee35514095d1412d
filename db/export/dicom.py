"""DICOM export: each case's CT and SEG files, copied or de-identified with the catalog's UID key.

De-identified, an image with burned-in annotation (BurnedInAnnotation YES) is left out and
counted, unless the caller states its pixels were cleaned (``pixels_cleaned``).
"""

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
    """<case>/CT/<n>.dcm and <case>/SEG/<n>.dcm; counts the images left out for burned-in
    annotation (``pixels_cleaned``: the caller states their pixels were cleaned, they go out)."""

    index_files: tuple[str, ...] = ()

    def __init__(self, pixels_cleaned: bool = False) -> None:
        self.pixels_cleaned = pixels_cleaned
        self.burned_in_left_out = 0

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative CT and SEG folders of a case."""
        return f"{case_id}/CT", f"{case_id}/SEG"

    def write_files(self, case: Case, volume: Volume, ct_dir: Path, seg_dir: Path,
                    uids: UidMapper | None) -> None:
        """:func:`write_case_files` with this layout's option, counting what it leaves out."""
        self.burned_in_left_out += write_case_files(case, volume, ct_dir, seg_dir, uids,
                                                    pixels_cleaned=self.pixels_cleaned)

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> dict[str, int]:
        """Nothing beyond the manifest; the figure: images left out for burned-in annotation."""
        return {"burned_in_left_out": self.burned_in_left_out}


def write_case_files(case: Case, volume: Volume, ct_dir: Path, seg_dir: Path,
                     uids: UidMapper | None, *, pixels_cleaned: bool = False) -> int:
    """Copy (or de-identify, when ``uids`` is given) the case's CT slices and SEG files.

    Returns the number of files left out for burned-in annotation (de-identified only).

    Raises
    ------
    ValueError
        Every CT image of the case carries burned-in annotation: nothing of it can go out.
    """
    deid = (Deidentifier(uids, pseudonym=case.patient_pseudonym, pixels_cleaned=pixels_cleaned)
            if uids is not None else None)
    sources = sorted({src.path for src in volume.slices})
    seg_files = sorted({ref.seg_path for ref in case.segments})
    ct_jobs = [(Path(p), ct_dir / f"{i:05d}.dcm") for i, p in enumerate(sources)]
    seg_jobs = [(Path(p), seg_dir / f"{i:03d}.dcm") for i, p in enumerate(seg_files)]
    if deid is None:
        for source, target in ct_jobs + seg_jobs:
            _copy(source, target)
        return 0
    ct_left_out = sum(deidentify_file(s, t, deid) is None for s, t in ct_jobs)
    if ct_left_out == len(ct_jobs):
        raise ValueError(f"all {ct_left_out} CT images of series {case.case_id} carry burned-in "
                         "annotation (BurnedInAnnotation YES): left out of a de-identified export")
    return ct_left_out + sum(deidentify_file(s, t, deid) is None for s, t in seg_jobs)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
