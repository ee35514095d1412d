"""Reading what an export case needs: the CT volume and its label from the SEG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from db.export.cases import Case, SegmentRef
from dicom_io.errors import DicomInputError
from dicom_io.files import atomic_path
from dicom_io.nifti import to_sitk
from dicom_io.seg import read_seg_masks
from dicom_io.volume import Volume, load_series

# gzip level for exported NIfTI: 1 is several times faster than the default for ~10% more bytes.
_NIFTI_GZIP_LEVEL = 1


def check_sources(case: Case) -> None:
    """Raise ``FileNotFoundError`` naming the first of the case's CT folder and SEG files that
    is missing (a path recorded relative is read from the current folder)."""
    sources = [("CT series", case.series_path)] + [("SEG", s.seg_path) for s in case.segments]
    for what, path in sources:
        if not Path(path).exists():
            hint = "" if Path(path).is_absolute() else " (recorded as a relative path)"
            raise FileNotFoundError(f"{what} {path} not found{hint}")


def load_case_volume(case: Case) -> Volume:
    """The case's CT series as a Volume."""
    return load_series(case.series_path, case.series_instance_uid)


def read_label(volume: Volume, segments: Sequence[SegmentRef]) -> np.ndarray:
    """Union of the segments' masks on the volume's grid, as uint8 (1 = lesion)."""
    label = np.zeros(volume.array.shape, dtype=np.uint8)
    by_file: dict[str, set[int]] = {}
    for ref in segments:
        by_file.setdefault(ref.seg_path, set()).add(ref.segment_number)
    for path, numbers in by_file.items():
        masks = read_seg_masks(Path(path), volume)
        missing = numbers - set(masks)
        if missing:
            raise DicomInputError(f"SEG {path} - has no segment(s) {sorted(missing)}")
        for number in numbers:
            label[masks[number]] = 1
    return label


def write_nifti(array: np.ndarray, volume: Volume, path: Path) -> Path:
    """Write an array on the volume's grid as NIfTI (temp name, then rename)."""
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(to_sitk(array, volume.affine), str(tmp), True, _NIFTI_GZIP_LEVEL)
    return path


def ct_as_int16(volume: Volume) -> np.ndarray:
    """The volume's HU as int16 (CT values are integers; half the bytes of float32)."""
    return np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
