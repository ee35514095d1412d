"""Metrics on shapes whose answers are known, and against a brute-force surface distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from sam2ct.geometry import long_axis_mm, longest_chord, longest_perpendicular
from sam2ct.metrics import (
    Evaluation,
    dice,
    evaluate,
    hd95_mm,
    long_axis_error_mm,
    volume_error_pct,
    volume_ml,
)


def _box(shape=(12, 30, 30), lo=(2, 5, 5), hi=(8, 20, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * np.asarray(spacing)

    d = cdist(surface(a), surface(b))
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def test_dice_of_known_overlaps():
    a = _box()
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    half = a.copy()
    half[:, :, 12:] = False  # 7 of 15 columns kept
    assert dice(a, half) == pytest.approx(2 * 7 / (15 + 7))


def test_hd95_matches_brute_force_with_anisotropic_spacing():
    spacing = (3.0, 0.8, 0.7)
    a = _box()
    b = np.roll(_box(lo=(3, 6, 4), hi=(9, 18, 22)), 1, axis=2)
    expected = _brute_hd95(a, b, spacing)
    assert expected > 0
    assert hd95_mm(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert hd95_mm(a, a, spacing) == 0.0


def test_hd95_of_a_shift_is_the_shift():
    a = _box()
    b = np.roll(a, 2, axis=0)  # two slices of 2.5 mm: top and bottom faces 5 mm apart
    assert 0 < hd95_mm(a, b, (2.5, 1.0, 1.0)) <= 5.0 + 1e-9


def test_hd95_with_empty_masks():
    a = _box()
    empty = np.zeros_like(a)
    assert hd95_mm(empty, empty, (1, 1, 1)) == 0.0
    assert math.isinf(hd95_mm(a, empty, (1, 1, 1)))


def test_volume_error_and_volume():
    truth = _box()
    pred = truth.copy()
    pred[8:, 5:20, 5:20] = True  # slices 8..11 added to 2..7: 10 slices instead of 6
    assert volume_error_pct(pred, truth) == pytest.approx(100 * 4 / 6)
    assert volume_error_pct(truth[:0], truth[:0]) == 0.0
    assert volume_ml(truth, (2.0, 1.0, 1.0)) == pytest.approx(6 * 15 * 15 * 2 / 1000)


def test_long_axis_of_a_bar_and_a_disc():
    bar = np.zeros((1, 10, 40), dtype=bool)
    bar[0, 4, 5:36] = True  # 31 voxel centres in a row
    assert long_axis_mm(bar, (1.0, 2.0, 0.5)) == pytest.approx(15.0)
    rr, cc = np.mgrid[:60, :60]
    disc = ((rr - 30) ** 2 + (cc - 30) ** 2 <= 20 ** 2)[None]
    assert long_axis_mm(disc, (1.0, 1.0, 1.0)) == pytest.approx(40.0, abs=0.5)
    small = ((rr - 30) ** 2 + (cc - 30) ** 2 <= 15 ** 2)[None]
    assert long_axis_error_mm(disc, small, (1.0, 1.0, 1.0)) == pytest.approx(10.0, abs=0.5)


def test_longest_chord_accounts_for_pixel_spacing():
    rect = np.zeros((30, 40), dtype=bool)
    rect[5:25, 5:35] = True  # 20 rows x 30 columns
    chord = longest_chord(rect, (2.0, 1.0))
    assert chord.length_mm == pytest.approx(math.hypot(19 * 2.0, 29 * 1.0))
    short = longest_perpendicular(rect, (2.0, 1.0), chord)
    d = (chord.end - chord.start) * (2.0, 1.0)
    e = (short.end - short.start) * (2.0, 1.0)
    assert abs(np.dot(d, e)) / (np.linalg.norm(d) * np.linalg.norm(e)) < 0.05
    assert 0 < short.length_mm < chord.length_mm


def test_evaluate_and_json():
    truth = _box()
    pred = np.roll(truth, 1, axis=1)
    ev = evaluate(pred, truth, (2.0, 1.0, 1.0))
    assert isinstance(ev, Evaluation)
    assert ev.dice == pytest.approx(dice(pred, truth))
    assert ev.volume_error_pct == 0.0
    assert Evaluation(0.0, math.inf, math.inf, 0.0).to_json()["hd95_mm"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        dice(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_short_axis_does_not_depend_on_where_the_lesion_lies():
    """Strips counted from the image origin once gave 7.24 vs 7.36 mm for the same lesion moved."""
    rng = np.random.default_rng(3)
    blob = np.zeros((24, 24), dtype=bool)
    rr, cc = np.mgrid[:24, :24]
    blob[((rr - 11.3) / 9.1) ** 2 + ((cc - 12.2) / 5.3) ** 2 <= 1] = True
    blob &= rng.random(blob.shape) > 0.03  # a ragged outline
    spacing = (0.71, 0.71)
    lengths = set()
    for dr, dc in [(0, 0), (13, 7), (41, 90), (77, 3)]:
        image = np.zeros((128, 128), dtype=bool)
        image[dr:dr + 24, dc:dc + 24] = blob
        chord = longest_chord(image, spacing)
        lengths.add(round(longest_perpendicular(image, spacing, chord).length_mm, 6))
    assert len(lengths) == 1, lengths
