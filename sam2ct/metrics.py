"""Segmentation metrics against ground truth at native resolution: Dice, HD95, volume, long axis."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from sam2ct.geometry import long_axis_mm


@dataclass(frozen=True)
class Evaluation:
    """The four numbers reported per lesion (errors are signed: prediction minus truth)."""

    dice: float
    hd95_mm: float
    volume_error_pct: float
    long_axis_error_mm: float

    def to_json(self) -> dict[str, float | None]:
        """A JSON-safe dict (infinite or undefined values become None)."""
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != truth.shape:
        raise ValueError(f"Invalid masks - prediction {pred.shape} and truth {truth.shape} differ")
    return pred.astype(bool, copy=False), truth.astype(bool, copy=False)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A|+|B|); 1.0 when both masks are empty."""
    pred, truth = _check(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th percentile of the symmetric surface-to-surface distances in mm.

    0 when both masks are empty, infinity when only one is. Works in the union's bounding box.
    """
    pred, truth = _check(pred, truth)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.inf
    union = ndimage.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in union)
    a, b = _surface(pred[box]), _surface(truth[box])
    to_b = ndimage.distance_transform_edt(~b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~a, sampling=spacing)
    distances = np.concatenate([to_b[a], to_a[b]])
    return float(np.percentile(distances, 95))


def volume_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Volume of a mask in millilitres."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def volume_error_pct(pred: np.ndarray, truth: np.ndarray) -> float:
    """Signed volume error in percent of the truth's volume (infinity when the truth is empty)."""
    pred, truth = _check(pred, truth)
    n_truth = int(truth.sum())
    if n_truth == 0:
        return 0.0 if not pred.any() else math.inf
    return 100.0 * (int(pred.sum()) - n_truth) / n_truth


def long_axis_error_mm(pred: np.ndarray, truth: np.ndarray,
                       spacing: tuple[float, float, float]) -> float:
    """Signed error of the longest axial diameter (RECIST long axis), prediction minus truth."""
    pred, truth = _check(pred, truth)
    return long_axis_mm(pred, spacing) - long_axis_mm(truth, spacing)


def evaluate(pred: np.ndarray, truth: np.ndarray,
             spacing: tuple[float, float, float]) -> Evaluation:
    """All four metrics of one predicted mask against its truth."""
    return Evaluation(dice(pred, truth), hd95_mm(pred, truth, spacing),
                      volume_error_pct(pred, truth), long_axis_error_mm(pred, truth, spacing))
