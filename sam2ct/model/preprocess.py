"""Pre-processing as published: HU window, [0, 1], bilinear resize, 3 channels, ImageNet norm;
and prompts turned into labelled points in the model input space."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sam2ct.model.config import MODEL_INPUT_SIZE, PointLabel, SAM2CTConfig
from sam2ct.prompts import Prompt, PromptKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_view(array: np.ndarray, config: SAM2CTConfig) -> np.ndarray:
    """(z, rows, cols) -> the slices as the model sees them: (z, cols, rows) when
    ``config.transpose_slices`` (the published orientation), else unchanged. A view, no copy;
    its own inverse (masks in model view go back through it)."""
    return np.swapaxes(array, -1, -2) if config.transpose_slices else array


def model_shape(shape: tuple[int, int], config: SAM2CTConfig) -> tuple[int, int]:
    """A (rows, cols) slice shape as the model sees it (``model_view``)."""
    rows, cols = shape
    return (cols, rows) if config.transpose_slices else (rows, cols)


def intensity_range(volume: np.ndarray, config: SAM2CTConfig) -> tuple[float, float]:
    """The HU that map to 0 and 1: the window's bounds, or with ``config.volume_min_max`` the
    minimum and maximum of the volume clipped to the window (as published)."""
    low, high = config.hu_window
    if not config.volume_min_max:
        return low, high
    vmin, vmax = float(np.min(volume)), float(np.max(volume))
    return min(max(vmin, low), high), min(max(vmax, low), high)


def preprocess_slices(slices: np.ndarray | torch.Tensor, config: SAM2CTConfig,
                      device: str | torch.device = "cpu",
                      scale: tuple[float, float] | None = None) -> torch.Tensor:
    """(n, rows, cols) HU -> (n, 3, S, S) float32 model input on ``device``.

    HU are clipped to ``config.hu_window``, mapped from ``scale`` (the volume's
    ``intensity_range``; default the window) to [0, 1], resized bilinearly, repeated to 3
    channels and normalised with ImageNet's mean and std. A constant volume maps to 0.
    """
    low, high = config.hu_window
    lo, hi = scale or (low, high)
    x = torch.as_tensor(np.asarray(slices, dtype=np.float32) if isinstance(slices, np.ndarray)
                        else slices, dtype=torch.float32, device=device)
    if x.ndim != 3:
        raise ValueError(f"Invalid 'slices' shape {tuple(x.shape)} - expected (n, rows, cols)")
    x = ((x.clamp(low, high) - lo) / max(hi - lo, 1e-6)).unsqueeze(1)
    size = (config.image_size, config.image_size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def to_model_space(points: np.ndarray, shape: tuple[int, int], image_size: int) -> np.ndarray:
    """(x, y) voxel indices on a (rows, cols) slice -> (x, y) in the S x S model input."""
    rows, cols = shape
    return np.asarray(points, dtype=float) * np.array([image_size / cols, image_size / rows])


def arrow_points(head: np.ndarray, tail: np.ndarray, distance: float) -> np.ndarray:
    """Head and the second point ``distance`` from it towards the tail (the tail if closer)."""
    shaft = tail - head
    length = float(np.hypot(*shaft))
    second = tail if length <= distance else head + shaft * (distance / length)
    return np.stack([head, second])


def prompt_points(prompt: Prompt, shape: tuple[int, int], config: SAM2CTConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A prompt on a (rows, cols) slice as ((N, 2) float coordinates, (N,) int labels) in the
    model input space (x, y swapped when the model sees slices transposed, ``model_view``).

    LINE / BIDIRECTIONAL: every end point gets label 4. ARROW: head 6, second point 5.
    ELLIPSE / CIRCLE / POLYGON: their bounding box as corners 2 and 3. POINT: label 1.
    """
    pts = prompt.points[:, ::-1] if config.transpose_slices else prompt.points
    pts = to_model_space(pts, model_shape(shape, config), config.image_size)
    kind = prompt.kind
    if kind in (PromptKind.LINE, PromptKind.BIDIRECTIONAL):
        return pts, np.full(len(pts), PointLabel.LINE_END, dtype=np.int64)
    if kind is PromptKind.ARROW:
        distance = config.arrow_second_point * config.image_size / MODEL_INPUT_SIZE
        return (arrow_points(pts[0], pts[1], distance),
                np.array([PointLabel.ARROW_HEAD, PointLabel.ARROW_SECOND], dtype=np.int64))
    if kind is PromptKind.POINT:
        return pts, np.array([PointLabel.POSITIVE], dtype=np.int64)
    if kind is PromptKind.CIRCLE:
        radius = float(np.hypot(*(pts[1] - pts[0])))
        pts = np.stack([pts[0] - radius, pts[0] + radius])
    box = np.stack([pts.min(axis=0), pts.max(axis=0)])
    box = np.clip(box, 0, config.image_size - 1)
    return box, np.array([PointLabel.BOX_TOP_LEFT, PointLabel.BOX_BOTTOM_RIGHT], dtype=np.int64)


def point_inputs(coords: np.ndarray, labels: np.ndarray, device: str | torch.device = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """SAM2's ``point_inputs`` dict for one object: coords (1, N, 2) float, labels (1, N) int32."""
    return {"point_coords": torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
            "point_labels": torch.as_tensor(labels, dtype=torch.int32, device=device)[None]}
