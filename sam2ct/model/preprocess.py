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


def preprocess_slices(slices: np.ndarray | torch.Tensor, config: SAM2CTConfig,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """(n, rows, cols) HU -> (n, 3, S, S) float32 model input on ``device``."""
    low, high = config.hu_window
    x = torch.as_tensor(np.asarray(slices, dtype=np.float32) if isinstance(slices, np.ndarray)
                        else slices, dtype=torch.float32, device=device)
    if x.ndim != 3:
        raise ValueError(f"Invalid 'slices' shape {tuple(x.shape)} - expected (n, rows, cols)")
    x = ((x.clamp(low, high) - low) / (high - low)).unsqueeze(1)
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
    """A prompt as ((N, 2) float coordinates, (N,) int labels) in the model input space.

    LINE / BIDIRECTIONAL: every end point gets label 4. ARROW: head 6, second point 5.
    ELLIPSE / CIRCLE / POLYGON: their bounding box as corners 2 and 3. POINT: label 1.
    """
    pts = to_model_space(prompt.points, shape, config.image_size)
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
