"""A CT series as a 3D array of Hounsfield units with its patient-space geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume came from: a single-frame image, or a frame of a multi-frame one."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    frame_number: int | None = None  # 1-based, only for multi-frame images


@dataclass(frozen=True)
class Volume:
    """A CT series resampled to nothing: voxels exactly as stored, ordered along the slice normal.

    ``array`` has shape (slices, rows, columns) in HU (float32). ``affine`` maps a voxel index
    (column, row, slice, 1) to patient LPS millimetres, so a gantry tilt shows as shear.

    Example
    -------
    >>> vol.lps_to_index(vol.index_to_lps([[10, 20, 3]]))  # doctest: +SKIP
    array([[10., 20., 3.]])
    """

    array: np.ndarray
    affine: np.ndarray
    study_instance_uid: str
    series_instance_uid: str
    slices: tuple[SliceSource, ...]
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Invalid 'array' shape {self.array.shape} - a volume is 3D")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Invalid 'affine' shape {self.affine.shape} - must be 4x4")
        if len(self.slices) != self.array.shape[0]:
            raise ValueError(
                f"Invalid 'slices' - {len(self.slices)} sources for {self.array.shape[0]} slices"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in array axis order: (slice step, row spacing, column spacing)."""
        col, row, slc = (float(np.linalg.norm(self.affine[:3, i])) for i in range(3))
        return (slc, row, col)

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices (N, 3) as (column, row, slice) -> patient LPS mm (N, 3)."""
        index = np.atleast_2d(np.asarray(index, dtype=float))
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Patient LPS mm (N, 3) -> fractional voxel indices (N, 3) as (column, row, slice)."""
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        return (lps - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def slice_of_sop(self, sop_instance_uid: str, frame_number: int | None = None) -> int | None:
        """Index of the slice stored as this SOP instance (and frame), or None if not in the volume."""
        for i, src in enumerate(self.slices):
            if src.sop_instance_uid == sop_instance_uid and (
                frame_number is None or src.frame_number in (None, frame_number)
            ):
                return i
        return None
