"""Place an annotation in a CT volume: slice index, voxel (column, row) and patient LPS points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.uid import UID

from dicom_io.gsps.annotation import Annotation
from dicom_io.series_index import CtStorage
from dicom_io.volume import Volume

# Points this far (voxels) beyond the outer pixel edges still count as inside the image.
_EDGE_TOLERANCE_VOXELS = 1e-3


@dataclass(frozen=True)
class LocatedAnnotation:
    """An annotation mapped onto a volume, or the reason it cannot be.

    ``points_voxel`` is (N, 2) (column, row) voxel indices on slice ``slice_index`` (a voxel centre
    is an integer: GSPS pixel coordinate - 0.5); ``points_lps`` is (N, 3) patient LPS mm.

    Example
    -------
    >>> loc = locate(annotation, volume)  # doctest: +SKIP
    >>> loc.usable, loc.slice_index, loc.points_voxel.shape  # doctest: +SKIP
    (True, 57, (2, 2))
    """

    annotation: Annotation
    slice_index: int | None = None
    points_voxel: np.ndarray | None = None
    points_lps: np.ndarray | None = None
    skip_reason: str | None = None

    @property
    def usable(self) -> bool:
        """Whether the annotation can become a prompt on this volume."""
        return self.skip_reason is None and self.annotation.usable


def locate(annotation: Annotation, volume: Volume) -> LocatedAnnotation:
    """Map an annotation's pixel points to ``volume``'s voxels and LPS mm (never raises).

    The annotation's own skip reason is kept; otherwise a new one is given when its image is not
    a CT slice of this series, or a point is NaN or outside the image.
    """
    reason = annotation.skip_reason or _reference_problem(annotation, volume)
    if reason:
        return LocatedAnnotation(annotation, skip_reason=reason)
    slice_index = volume.slice_of_sop(
        annotation.referenced_sop_instance_uid or "", annotation.referenced_frame
    )
    if slice_index is None:
        return LocatedAnnotation(annotation, skip_reason=(
            f"referenced image {annotation.referenced_sop_instance_uid} is not in series "
            f"{volume.series_instance_uid} (missing from the study, a localizer, or another "
            "series)"))
    pixels = np.asarray(annotation.points, dtype=float).reshape(-1, 2)
    if len(pixels) == 0:
        return LocatedAnnotation(annotation, slice_index,
                                 skip_reason=f"{annotation.kind.value} without points")
    if not np.all(np.isfinite(pixels)):
        return LocatedAnnotation(annotation, slice_index,
                                 skip_reason="NaN or infinite coordinates")
    voxels = pixels - 0.5
    outside = _outside(voxels, volume)
    if outside:
        return LocatedAnnotation(annotation, slice_index, voxels, skip_reason=outside)
    index = np.column_stack([voxels, np.full(len(voxels), float(slice_index))])
    return LocatedAnnotation(annotation, slice_index, voxels, volume.index_to_lps(index))


def _reference_problem(annotation: Annotation, volume: Volume) -> str | None:
    """Why the referenced image cannot be a slice of a CT volume, judged from its SOP class."""
    if annotation.referenced_sop_instance_uid is None:
        return "annotation references no image"
    sop_class = annotation.referenced_sop_class_uid
    if sop_class and not CtStorage.is_ct(sop_class):
        return (
            f"referenced image {annotation.referenced_sop_instance_uid} is a "
            f"{UID(sop_class).name}, not a CT slice of series {volume.series_instance_uid}"
        )
    return None


def _outside(voxels: np.ndarray, volume: Volume) -> str | None:
    """A message when any voxel point lies outside the slice's pixel area."""
    _, rows, cols = volume.array.shape
    lo = -0.5 - _EDGE_TOLERANCE_VOXELS
    c, r = voxels[:, 0], voxels[:, 1]
    if c.min() < lo or r.min() < lo or c.max() > cols - 1 - lo or r.max() > rows - 1 - lo:
        return f"points outside the image ({cols} columns x {rows} rows)"
    return None
