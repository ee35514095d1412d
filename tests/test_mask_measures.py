"""Lesion measures of a mask (sam2ct.geometry.measure_mask), taken on the mask's bounding box,
against the same measures taken on the whole volume."""

from __future__ import annotations

import numpy as np
import pytest

from sam2ct.geometry import (
    bounding_box,
    long_axis_mm,
    longest_chord,
    longest_perpendicular,
    measure_mask,
)


def _image(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(3).normal(40, 30, shape).astype(np.float32)


def _lesion(shape: tuple[int, int, int]) -> np.ndarray:
    """An off-centre ellipsoid with a bump, so no axis is symmetric."""
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    mask = ((z - 7) / 3.0) ** 2 + ((y - 40) / 9.0) ** 2 + ((x - 70) / 5.0) ** 2 <= 1.0
    mask[7, 44:52, 70:74] = True
    return mask


@pytest.mark.parametrize("spacing", [(5.0, 0.8, 0.8), (2.5, 0.7, 1.1)])
def test_measures_on_the_box_equal_those_on_the_volume(spacing):
    image = _image((16, 96, 128))
    mask = _lesion(image.shape)
    result = measure_mask(mask, spacing, image)

    where = np.argwhere(mask)
    assert result.bbox == (*map(int, where.min(axis=0)), *map(int, where.max(axis=0)))
    assert result.voxels == int(mask.sum())
    assert result.volume_ml == round(mask.sum() * float(np.prod(spacing)) / 1000.0, 3)
    assert result.mean_hu == round(float(image[mask].mean()), 1)
    largest = mask[int(np.argmax(mask.sum(axis=(1, 2))))]
    axis = longest_chord(largest, spacing[1:])
    assert result.long_axis_mm == round(long_axis_mm(mask, spacing), 2)
    assert result.short_axis_mm == round(longest_perpendicular(largest, spacing[1:], axis)
                                         .length_mm, 2)
    assert 0 < result.short_axis_mm <= result.long_axis_mm


def test_bounding_box_of_one_voxel_and_of_a_full_edge():
    mask = np.zeros((4, 5, 6), bool)
    mask[3, 0, 5] = True
    assert bounding_box(mask) == (slice(3, 4), slice(0, 1), slice(5, 6))
    mask[:, 4, :] = True
    assert bounding_box(mask) == (slice(0, 4), slice(0, 5), slice(0, 6))
