"""One interface for every model: ``segment(volume, spacing, prompts) -> masks``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sam2ct.prompts import Prompt


@runtime_checkable
class Segmenter(Protocol):
    """A promptable 3D segmenter.

    ``volume`` is (slices, rows, columns) in HU; ``spacing`` (slice, row, column) in mm. Returns one
    boolean mask of the volume's shape per prompt, in order.
    """

    name: str
    version: str
    checkpoint_sha256: str | None

    def segment(
        self, volume: np.ndarray, spacing: tuple[float, float, float], prompts: Sequence[Prompt]
    ) -> list[np.ndarray]: ...
