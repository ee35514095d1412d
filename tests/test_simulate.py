"""Prompt simulation from masks: RECIST line and bidirectional, arrows, and the other kinds."""

from __future__ import annotations

import numpy as np
import pytest

from sam2ct.prompts import PromptKind
from sam2ct.simulate import ARROW_LENGTH_MM, largest_slice, simulate_prompt

SPACING = (2.5, 0.8, 0.8)
ANGLE = np.deg2rad(30.0)


def _ellipsoid(a=25.0, b=12.0, c=4.0, shape=(16, 96, 96)) -> np.ndarray:
    """Semi-axes a (in-plane, rotated by ANGLE), b (in-plane) and c (slices), in voxels."""
    z, r, col = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    dz, dr, dc = z - 7, r - 48, col - 50
    u = dc * np.cos(ANGLE) + dr * np.sin(ANGLE)
    v = -dc * np.sin(ANGLE) + dr * np.cos(ANGLE)
    return (u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2 <= 1.0


def _length_mm(p0, p1) -> float:
    return float(np.hypot((p1[0] - p0[0]) * SPACING[2], (p1[1] - p0[1]) * SPACING[1]))


def test_line_is_the_long_axis_on_the_largest_slice():
    mask = _ellipsoid()
    prompt = simulate_prompt(mask, "line", SPACING)
    assert prompt.kind is PromptKind.LINE
    assert prompt.slice_index == largest_slice(mask) == 7
    p0, p1 = prompt.points
    assert _length_mm(p0, p1) == pytest.approx(2 * 25 * 0.8, abs=2 * 0.8)
    direction = (p1 - p0) / np.linalg.norm(p1 - p0)
    assert abs(direction @ [np.cos(ANGLE), np.sin(ANGLE)]) > 0.99
    for x, y in prompt.points:  # both ends are voxels of the lesion
        assert mask[7, int(round(y)), int(round(x))]


def test_bidirectional_adds_the_perpendicular_short_axis():
    prompt = simulate_prompt(_ellipsoid(), "bidirectional", SPACING)
    long0, long1, short0, short1 = prompt.points
    assert _length_mm(short0, short1) == pytest.approx(2 * 12 * 0.8, abs=2 * 0.8)
    d, e = long1 - long0, short1 - short0
    assert abs(d @ e) / (np.linalg.norm(d) * np.linalg.norm(e)) < 0.1


def test_arrow_head_on_the_boundary_and_tail_outside():
    mask = _ellipsoid()
    heads = set()
    for seed in range(6):
        prompt = simulate_prompt(mask, "arrow", SPACING, np.random.default_rng(seed))
        (hx, hy), (tx, ty) = prompt.points
        plane = mask[prompt.slice_index]
        assert plane[int(round(hy)), int(round(hx))]
        ring = plane[int(hy) - 1:int(hy) + 2, int(hx) - 1:int(hx) + 2]
        assert not ring.all(), "the head must be on the boundary"
        assert not plane[int(round(ty)), int(round(tx))]
        assert _length_mm((hx, hy), (tx, ty)) == pytest.approx(ARROW_LENGTH_MM, abs=0.01)
        heads.add((hx, hy))
    assert len(heads) > 1, "directions are random across seeds"


def test_arrow_is_reproducible_and_stays_in_the_image():
    mask = np.zeros((3, 40, 40), dtype=bool)
    mask[1, 1:6, 1:6] = True  # a lesion in the corner: the shaft is shortened
    for seed in range(10):
        a = simulate_prompt(mask, "arrow", SPACING, np.random.default_rng(seed))
        b = simulate_prompt(mask, "arrow", SPACING, np.random.default_rng(seed))
        np.testing.assert_array_equal(a.points, b.points)
        assert np.all(a.points >= 0) and np.all(a.points <= 39)
    default = simulate_prompt(mask, "arrow", SPACING)
    np.testing.assert_array_equal(default.points, simulate_prompt(mask, "arrow", SPACING).points)


@pytest.mark.parametrize("kind", ["ellipse", "circle", "polygon", "point"])
def test_other_kinds_lie_on_the_lesion(kind):
    mask = _ellipsoid()
    prompt = simulate_prompt(mask, kind, SPACING)
    assert prompt.kind.value == kind and prompt.slice_index == 7
    centre = prompt.points.mean(axis=0) if kind != "circle" else prompt.points[0]
    assert mask[7, int(round(centre[1])), int(round(centre[0]))]
    if kind == "ellipse":
        major = prompt.points[1] - prompt.points[0]
        assert np.linalg.norm(major) == pytest.approx(50, abs=2)
        assert abs(major @ [np.cos(ANGLE), np.sin(ANGLE)]) / np.linalg.norm(major) > 0.99
    if kind == "polygon":
        assert 3 <= len(prompt.points) <= 64


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        simulate_prompt(np.zeros((2, 5, 5), dtype=bool), "line", SPACING)
