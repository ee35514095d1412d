"""Prompts in voxel space: what a radiologist drew, as points on one slice of a volume."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class PromptKind(StrEnum):
    """What the points of a prompt mean (their order is fixed per kind, see ``Prompt``)."""

    LINE = "line"
    BIDIRECTIONAL = "bidirectional"
    ARROW = "arrow"
    ELLIPSE = "ellipse"
    CIRCLE = "circle"
    POLYGON = "polygon"
    POINT = "point"


#: (minimum, maximum) points of each kind (dicom_io's annotation kinds use the same)
POINT_COUNTS: dict[PromptKind, tuple[int, int]] = {
    PromptKind.LINE: (2, 2),
    PromptKind.BIDIRECTIONAL: (4, 4),
    PromptKind.ARROW: (2, 2),
    PromptKind.ELLIPSE: (4, 4),
    PromptKind.CIRCLE: (2, 2),
    PromptKind.POLYGON: (3, 100_000),
    PromptKind.POINT: (1, 1),
}


@dataclass(frozen=True)
class Prompt:
    """Points drawn on slice ``slice_index``, as (x = column, y = row) voxel indices.

    A voxel's centre is at integer coordinates. Point order per kind:
    LINE: two ends; BIDIRECTIONAL: long-axis ends, then short-axis ends; ARROW: head (tip), then
    tail; ELLIPSE: major-axis ends, then minor-axis ends; CIRCLE: centre, then a rim point;
    POLYGON: vertices; POINT: one point. ``identifier`` ties the prompt to its annotation.

    Example
    -------
    >>> Prompt(PromptKind.LINE, 12, np.array([[100.0, 80.0], [130.0, 95.0]]))  # doctest: +ELLIPSIS
    Prompt(kind=<PromptKind.LINE: 'line'>, slice_index=12, ...)
    """

    kind: PromptKind
    slice_index: int
    points: np.ndarray
    identifier: str = ""

    def __post_init__(self) -> None:
        kind = PromptKind(self.kind)
        object.__setattr__(self, "kind", kind)
        pts = np.asarray(self.points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"Invalid 'points' shape {pts.shape} - expected (N, 2)")
        low, high = POINT_COUNTS[kind]
        if not low <= len(pts) <= high:
            raise ValueError(f"Invalid 'points' - a {kind.value} prompt needs {low} to {high} points, got {len(pts)}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("Invalid 'points' - coordinates must be finite")
        object.__setattr__(self, "points", pts)
