"""Geometry of masks in millimetres: longest diameter and longest perpendicular (RECIST), and
the measures a catalog keeps of a lesion mask (``measure_mask``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError


@dataclass(frozen=True)
class Chord:
    """A segment between two points given as (row, column) voxel coordinates, and its length in mm."""

    start: np.ndarray
    end: np.ndarray
    length_mm: float


def largest_component(mask2d: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (empty in, empty out)."""
    labels, n = ndimage.label(mask2d, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def longest_chord(mask2d: np.ndarray, spacing: tuple[float, float]) -> Chord:
    """The longest segment between two voxel centres of ``mask2d`` (spacing: row, column mm)."""
    rc = np.argwhere(mask2d).astype(float)
    if len(rc) == 0:
        raise ValueError("Invalid 'mask2d' - empty, it has no diameter")
    scale = np.asarray(spacing, dtype=float)
    mm = rc * scale
    candidates = mm
    if len(mm) > 3:
        try:
            candidates = mm[ConvexHull(mm).vertices]
        except QhullError:  # collinear or too few distinct points: every point is a candidate
            candidates = mm
    dist = np.linalg.norm(candidates[:, None, :] - candidates[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Chord(candidates[i] / scale, candidates[j] / scale, float(dist[i, j]))


def longest_perpendicular(mask2d: np.ndarray, spacing: tuple[float, float], axis: Chord) -> Chord:
    """The widest extent of ``mask2d`` perpendicular to ``axis`` (RECIST short axis), in mm.

    Voxels are grouped in strips one voxel wide across the axis, counted from the axis' start,
    so the result moves with the lesion: it does not depend on where the lesion lies.
    """
    scale = np.asarray(spacing, dtype=float)
    mm = np.argwhere(mask2d).astype(float) * scale
    direction = (axis.end - axis.start) * scale
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return Chord(axis.start, axis.end, 0.0)
    d = direction / norm
    n = np.array([-d[1], d[0]])
    origin = np.asarray(axis.start, dtype=float) * scale  # bins start at the axis, not the image
    u, v = (mm - origin) @ d, (mm - origin) @ n
    bins = np.round(u / float(scale.min())).astype(int)
    order = np.argsort(bins, kind="stable")
    b, v, u = bins[order], v[order], u[order]
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    vmin, vmax = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
    counts = np.diff(np.r_[starts, len(b)])
    umean = np.add.reduceat(u, starts) / counts
    k = int(np.argmax(vmax - vmin))
    p = origin + umean[k] * d
    return Chord((p + vmin[k] * n) / scale, (p + vmax[k] * n) / scale, float(vmax[k] - vmin[k]))


def long_axis_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Longest axial diameter over all slices of a 3D mask (0 when empty)."""
    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        best = max(best, longest_chord(mask[z], spacing[1:]).length_mm)
    return best


@dataclass(frozen=True, kw_only=True)
class MaskMeasures:
    """What a lesion mask measures: voxels, volume, axial long and short axis (RECIST: the
    longest diameter on any slice; the longest perpendicular on the slice of largest area),
    bounding box (first slice, row, column, then last ones, inclusive) and mean HU."""

    voxels: int
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    bbox: tuple[int, int, int, int, int, int]
    mean_hu: float


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest (slices, rows, columns) box holding every voxel of a non-empty 3D mask.

    From the mask's projections, on the slices it touches: ~1 ms on a 80 x 512 x 512 volume,
    where ``ndimage.find_objects`` (a label scan of every voxel) took ~45 ms, 9 % of the
    pipeline bench's segmentation time.
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    plane = mask[zs[0]:zs[-1] + 1].any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return tuple(slice(int(ix[0]), int(ix[-1]) + 1) for ix in (zs, rows, cols))


def measure_mask(mask: np.ndarray, spacing: tuple[float, float, float],
                 image: np.ndarray) -> MaskMeasures:
    """Measures of a non-empty boolean ``mask`` on ``image`` (HU, same shape), rounded as the
    catalog stores them. ``spacing`` is (slice, row, column) mm.

    Counted on the mask's bounding box (a lesion's box is a small part of the volume); the axes
    on whole planes of its slices, since the short axis depends on where the lesion lies.
    """
    box = bounding_box(mask)
    lesion, planes = mask[box], mask[box[0]]
    voxels = int(np.count_nonzero(lesion))
    largest = planes[int(np.argmax(lesion.sum(axis=(1, 2))))]
    in_plane = (spacing[1], spacing[2])
    axis = longest_chord(largest, in_plane)
    return MaskMeasures(
        voxels=voxels, volume_ml=round(voxels * float(np.prod(spacing)) / 1000.0, 3),
        long_axis_mm=round(long_axis_mm(planes, spacing), 2),
        short_axis_mm=round(longest_perpendicular(largest, in_plane, axis).length_mm, 2),
        bbox=(*(b.start for b in box), *(b.stop - 1 for b in box)),  # type: ignore[arg-type]
        mean_hu=round(float(image[box][lesion].mean()), 1))
