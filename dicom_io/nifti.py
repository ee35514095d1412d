"""NIfTI images on a volume's grid, through SimpleITK (which converts LPS <-> the file's RAS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_io.files import atomic_path


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A (slices, rows, columns) array with a (column, row, slice) -> LPS affine as a SimpleITK image.

    The affine's columns must be orthogonal (no gantry-tilt shear): NIfTI via ITK cannot hold shear.
    """
    spacing = [float(np.linalg.norm(affine[:3, i])) for i in range(3)]
    direction = affine[:3, :3] / np.asarray(spacing)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise ValueError("Invalid 'affine' - sheared grids (gantry tilt) cannot be written as NIfTI")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def affine_of(image: sitk.Image) -> np.ndarray:
    """The (column, row, slice) -> LPS affine of a SimpleITK image."""
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    return affine


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` (slices, rows, columns) as NIfTI; to a temporary name first, then rename."""
    path = Path(path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(to_sitk(array, affine), str(tmp), useCompression=True)
    return path


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as ((slices, rows, columns) array, (column, row, slice) -> LPS affine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable NIfTI image ({exc})") from exc
    return sitk.GetArrayFromImage(image), affine_of(image)
