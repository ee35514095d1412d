"""What a radiologist would draw on a lesion: RECIST long/short axes and an arrow at its edge.

All points are (column, row) voxel indices on one slice (pixel centres at integers); GSPS PIXEL
coordinates are these plus 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Marks:
    """Drawings for one lesion on its slice of largest area, in (column, row) voxel indices."""

    slice_index: int
    long_axis: np.ndarray  # (2, 2) ends of the longest in-plane diameter
    short_axis: np.ndarray  # (2, 2) ends of the longest chord perpendicular to it
    tip: np.ndarray  # (2,) arrow head, on or just inside the boundary
    tail: np.ndarray  # (2,) arrow tail, outside the lesion


def largest_slice(mask: np.ndarray) -> int:
    """Index of the slice (axis 0) where the mask has the most voxels."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def _boundary_points(mask2d: np.ndarray) -> np.ndarray:
    """(N, 2) (column, row) of the mask's boundary pixels (all pixels if it is thin)."""
    edge = mask2d & ~ndimage.binary_erosion(mask2d)
    rows, cols = np.nonzero(edge if edge.any() else mask2d)
    return np.stack([cols, rows], axis=1).astype(float)


def long_axis(mask2d: np.ndarray) -> np.ndarray:
    """Ends (2, 2) of the longest distance between two pixel centres of the mask."""
    pts = _boundary_points(mask2d)
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return np.stack([pts[i], pts[j]])


def short_axis(mask2d: np.ndarray, long_ends: np.ndarray) -> np.ndarray:
    """Ends (2, 2) of the longest chord of the mask perpendicular to the long axis (RECIST)."""
    rows, cols = np.nonzero(mask2d)
    pts = np.stack([cols, rows], axis=1).astype(float)
    axis = long_ends[1] - long_ends[0]
    length = float(np.linalg.norm(axis))
    if length == 0:
        return long_ends.copy()
    along = axis / length
    perp = np.array([-along[1], along[0]])
    t = np.rint((pts - long_ends[0]) @ along).astype(int)
    s = (pts - long_ends[0]) @ perp
    bins = t - t.min()
    lo = np.full(bins.max() + 1, np.inf)
    hi = np.full(bins.max() + 1, -np.inf)
    np.minimum.at(lo, bins, s)
    np.maximum.at(hi, bins, s)
    best = int(np.argmax(hi - lo))
    base = long_ends[0] + along * (best + t.min())
    return np.stack([base + perp * lo[best], base + perp * hi[best]])


def _ray_to_edge(mask2d: np.ndarray, start: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Last sample (quarter-pixel steps) of the ray from ``start`` still inside the mask."""
    steps = np.arange(0, 2 * max(mask2d.shape), 0.25)
    ray = start + steps[:, None] * direction
    idx = np.rint(ray).astype(int)
    h, w = mask2d.shape
    ok = (idx[:, 0] >= 0) & (idx[:, 0] < w) & (idx[:, 1] >= 0) & (idx[:, 1] < h)
    inside = np.zeros(len(ray), dtype=bool)
    inside[ok] = mask2d[idx[ok, 1], idx[ok, 0]]
    first_out = int(np.argmin(inside)) if not inside.all() else len(ray)
    return ray[max(first_out - 1, 0)]


def arrow(mask2d: np.ndarray, rng: np.random.Generator,
          length_px: float) -> tuple[np.ndarray, np.ndarray]:
    """An arrow from outside the lesion to its edge: (tip, tail) in (column, row).

    A ray from the lesion's centre in a random direction: the tip is its last sample inside the
    mask (within a quarter pixel of the boundary), the tail ``length_px`` further out, kept in the
    image. Directions whose tail would land inside the lesion (image edge) are tried again.
    """
    rows, cols = np.nonzero(mask2d)
    centroid = np.array([cols.mean(), rows.mean()])
    nearest = int(np.argmin((cols - centroid[0]) ** 2 + (rows - centroid[1]) ** 2))
    start = np.array([cols[nearest], rows[nearest]], dtype=float)
    h, w = mask2d.shape
    first = rng.uniform(0, 2 * np.pi)
    for turn in np.arange(8) * np.pi / 4:
        direction = np.array([np.cos(first + turn), np.sin(first + turn)])
        tip = _ray_to_edge(mask2d, start, direction)
        tail = np.clip(tip + direction * length_px, [2.0, 2.0], [w - 3.0, h - 3.0])
        t_col, t_row = np.rint(tail).astype(int)
        if not mask2d[t_row, t_col] and np.linalg.norm(tail - tip) > 3.0:
            break
    return tip, tail


def plane_marks(plane: np.ndarray, rng: np.random.Generator, arrow_px: float,
                slice_index: int = 0) -> Marks:
    """RECIST axes and an arrow for a 2D mask (rows, columns) drawn on slice ``slice_index``."""
    plane = np.asarray(plane).astype(bool)
    if not plane.any():
        raise ValueError("Invalid 'plane' - the mask is empty, there is nothing to annotate")
    ends = long_axis(plane)
    tip, tail = arrow(plane, rng, arrow_px)
    return Marks(slice_index, ends, short_axis(plane, ends), tip, tail)


def marks(mask: np.ndarray, rng: np.random.Generator, arrow_px: float) -> Marks:
    """RECIST axes and an arrow for a 3D truth mask (slices, rows, columns), on the slice of
    largest area."""
    k = largest_slice(mask)
    return plane_marks(mask[k], rng, arrow_px, k)
