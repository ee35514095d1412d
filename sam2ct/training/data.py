"""Training cases: CT image + lesion label volumes, from NIfTI pairs or already-loaded arrays.

DICOM series with SEG/RTSTRUCT are read by the flows layer (``flows.cli.train``) through
``dicom_io`` and handed here as arrays: ``sam2ct`` does not import ``dicom_io``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NIFTI = (".nii.gz", ".nii")
_LAYOUTS = (("imagesTr", "labelsTr"), ("images", "labels"))


@dataclass(frozen=True)
class LesionCase:
    """One volume: ``image`` (z, rows, cols) in HU, ``label`` integer/boolean of the same shape."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]  # (slice, row, column) mm

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.label.shape:
            raise ValueError(f"Invalid case '{self.name}' - image {self.image.shape} and label "
                             f"{self.label.shape} must be the same 3D shape")
        if not np.any(self.label):
            raise ValueError(f"Invalid case '{self.name}' - its label is empty")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_NIFTI)


def find_nifti_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, label) triples under ``root``.

    Layouts: nnU-Net ``imagesTr/X_0000.nii.gz`` + ``labelsTr/X.nii.gz``; ``images/X`` +
    ``labels/X``; ``X_image.nii.gz`` + ``X_label.nii.gz`` side by side (any depth).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"training data folder not found: {root}")
    pairs: list[tuple[str, Path, Path]] = []
    for image_dir, label_dir in _LAYOUTS:
        for image in sorted((root / image_dir).glob("*.nii*")):
            stem = _stem(image)
            name = stem[:-5] if stem.endswith("_0000") else stem
            label = next((label_dir_file for label_dir_file in
                          (root / label_dir / f"{name}{s}" for s in _NIFTI)
                          if label_dir_file.is_file()), None)
            if label is not None:
                pairs.append((name, image, label))
    for image in sorted(root.rglob("*_image.nii*")):
        name = _stem(image)[: -len("_image")]
        label = next((p for p in (image.with_name(f"{name}_label{s}") for s in _NIFTI)
                      if p.is_file()), None)
        if label is not None:
            pairs.append((name, image, label))
    return pairs


def read_nifti_case(name: str, image: Path, label: Path) -> LesionCase:
    """Read one NIfTI image/label pair (SimpleITK; arrays come out as (z, rows, cols))."""
    import SimpleITK as sitk  # imported here: only NIfTI training needs it

    try:
        img = sitk.ReadImage(str(image))
        lab = sitk.ReadImage(str(label))
    except RuntimeError as exc:
        raise ValueError(f"case '{name}': unreadable NIfTI ({exc})") from exc
    sx, sy, sz = img.GetSpacing()
    return LesionCase(name, sitk.GetArrayFromImage(img).astype(np.float32),
                      sitk.GetArrayFromImage(lab), (float(sz), float(sy), float(sx)))


def load_nifti_cases(root: Path) -> list[LesionCase]:
    """Every NIfTI pair under ``root`` (see ``find_nifti_pairs``); empty labels are skipped."""
    cases = []
    for name, image, label in find_nifti_pairs(root):
        case = read_nifti_case(name, image, label)
        cases.append(case)
    return cases
