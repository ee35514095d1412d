"""Prompts simulated from a ground-truth mask, as a radiologist would draw them on one slice.

Used by ``sam2ct evaluate`` and by SAM2CT training. Rules: a line is the longest in-plane diameter
on the slice of largest area (RECIST); a bidirectional adds the longest perpendicular diameter; an
arrow has its head on the lesion boundary and its tail outside, in a random direction.

Example
-------
>>> prompt = simulate_prompt(truth, PromptKind.LINE, (3.0, 0.98, 0.98))  # doctest: +SKIP
>>> prompt.points  # (x, y) of the two ends  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure

from sam2ct.geometry import largest_component, longest_chord, longest_perpendicular
from sam2ct.prompts import Prompt, PromptKind

ARROW_LENGTH_MM = 20.0  # length of a simulated arrow's shaft
MAX_POLYGON_POINTS = 64


def simulate_prompt(mask: np.ndarray, kind: PromptKind | str, spacing: tuple[float, float, float],
                    rng: np.random.Generator | None = None, identifier: str = "") -> Prompt:
    """A prompt of ``kind`` drawn on the slice of largest area of a 3D boolean ``mask``.

    ``spacing`` is (slice, row, column) in mm. ``rng`` drives the arrow's direction (default: a
    generator seeded with 0, so results are reproducible). Raises ValueError for an empty mask.
    """
    kind = PromptKind(kind)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or not mask.any():
        raise ValueError("Invalid 'mask' - a non-empty 3D mask is needed to simulate a prompt")
    z = largest_slice(mask)
    region = largest_component(mask[z])
    rng = rng if rng is not None else np.random.default_rng(0)
    points = _POINTS[kind](region, spacing[1:], rng)
    return Prompt(kind, z, points, identifier)


def largest_slice(mask: np.ndarray) -> int:
    """Index of the axial slice with the most voxels (the first one on ties)."""
    return int(np.argmax(mask.sum(axis=(1, 2))))


def _xy(*rc: np.ndarray) -> np.ndarray:
    """(row, column) points -> an (N, 2) array of (x, y)."""
    return np.array([[p[1], p[0]] for p in rc], dtype=float)


def _line(region: np.ndarray, spacing, rng) -> np.ndarray:
    chord = longest_chord(region, spacing)
    return _xy(chord.start, chord.end)


def _bidirectional(region: np.ndarray, spacing, rng) -> np.ndarray:
    long = longest_chord(region, spacing)
    short = longest_perpendicular(region, spacing, long)
    return _xy(long.start, long.end, short.start, short.end)


def _arrow(region: np.ndarray, spacing, rng) -> np.ndarray:
    """Head on the boundary at the region's extreme point along a random direction; tail beyond."""
    scale = np.asarray(spacing, dtype=float)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    d = np.array([np.sin(theta), np.cos(theta)])  # (row, column) direction in mm space
    rc = np.argwhere(region).astype(float)
    head = rc[int(np.argmax((rc * scale) @ d))]
    shape = np.asarray(region.shape, dtype=float) - 1.0
    length = ARROW_LENGTH_MM
    tail = head + length * d / scale
    while np.any(tail < 0) or np.any(tail > shape):  # shorten the shaft to stay inside the image
        length *= 0.8
        tail = head + length * d / scale
        if length < 1.0:
            tail = np.clip(tail, 0, shape)
            break
    return _xy(head, tail)


def _ellipse(region: np.ndarray, spacing, rng) -> np.ndarray:
    props = measure.regionprops(region.astype(np.uint8))[0]
    r0, c0 = props.centroid
    major, minor = props.axis_major_length / 2, props.axis_minor_length / 2
    t = props.orientation  # angle between the row axis and the major axis
    u = np.array([np.cos(t), np.sin(t)])
    v = np.array([-np.sin(t), np.cos(t)])
    c = np.array([r0, c0])
    return _xy(c - major * u, c + major * u, c - minor * v, c + minor * v)


def _circle(region: np.ndarray, spacing, rng) -> np.ndarray:
    r0, c0 = ndimage.center_of_mass(region)
    radius = np.sqrt(region.sum() / np.pi)
    return _xy(np.array([r0, c0]), np.array([r0, c0 + radius]))


def _polygon(region: np.ndarray, spacing, rng) -> np.ndarray:
    contours = measure.find_contours(np.pad(region, 1).astype(float), 0.5)
    contour = max(contours, key=len) - 1.0
    step = max(1, int(np.ceil(len(contour) / MAX_POLYGON_POINTS)))
    contour = contour[:-1:step] if len(contour) > 3 else contour
    if len(contour) < 3:  # a one- or two-voxel region: its bounding square
        r, c = np.argwhere(region)[0]
        contour = np.array([[r - 0.5, c - 0.5], [r - 0.5, c + 0.5], [r + 0.5, c + 0.5]])
    return contour[:, ::-1].copy()


def _point(region: np.ndarray, spacing, rng) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([[c, r]], dtype=float)


_POINTS = {
    PromptKind.LINE: _line,
    PromptKind.BIDIRECTIONAL: _bidirectional,
    PromptKind.ARROW: _arrow,
    PromptKind.ELLIPSE: _ellipse,
    PromptKind.CIRCLE: _circle,
    PromptKind.POLYGON: _polygon,
    PromptKind.POINT: _point,
}
