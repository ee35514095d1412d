"""SAM2CT behind the project's one interface: ``segment(volume, spacing, prompts) -> masks``."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base

from sam2ct.model.checkpoint import CheckpointReport, load_sam2ct
from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.preprocess import prompt_points
from sam2ct.model.propagate import Propagation, propagate
from sam2ct.prompts import Prompt

logger = logging.getLogger(__name__)
MODEL_VERSION = "1.1"  # our implementation of the published design (1.1: its conventions)


def default_device() -> str:
    """``cuda`` when present, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _sam2_version() -> str:
    try:
        return version("sam2")
    except PackageNotFoundError:
        return "unknown"


class SAM2CTSegmenter:
    """SAM2CT: arrow/line/box/point prompt on one slice -> 3D mask on the native grid.

    Computes what the authors' published inference code computes for the same weights (the
    conventions of ``SAM2CTConfig``), and goes beyond it where it falls short: slice 0 is
    reached, and every mask comes back on the series' own grid and orientation.

    Load once per worker with ``from_checkpoint`` and reuse across series. Calls from several
    threads take turns: the CUDA graphs kept with the model have one set of buffers.

    Its own score of a mask (``segment_scored``) is the IoU that SAM2's decoder predicts for the
    mask it chose on the prompted slice, times the sigmoid of its object score logit there (the
    probability it gives that the object is present): both heads of the published network,
    trained with the IoU and object-score losses. In [0, 1]; it looks at the prompted slice
    only, not at how the mask propagated through the others.

    Example
    -------
    >>> seg = SAM2CTSegmenter.from_checkpoint(Path("sam2ct.pt"), device="cuda")  # doctest: +SKIP
    >>> [mask] = seg.segment(volume_hu, (3.0, 0.98, 0.98), [prompt])  # doctest: +SKIP
    >>> [(mask, score)] = seg.segment_scored(volume_hu, (3.0, 0.98, 0.98), [prompt])  # doctest: +SKIP
    """

    name = "sam2ct"

    def __init__(self, model: SAM2Base, config: SAM2CTConfig | None = None,
                 report: CheckpointReport | None = None) -> None:
        self.model = model.eval()
        self.config = config or SAM2CTConfig(image_size=model.image_size)
        self.report = report
        self.checkpoint_sha256 = report.sha256 if report else None
        self.version = f"{MODEL_VERSION} (sam2 {_sam2_version()})"
        self.last_propagations: list[Propagation] = []
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: Path, device: str | None = None,
                        config: SAM2CTConfig | None = None) -> SAM2CTSegmenter:
        """Load a checkpoint (published layout) on ``device`` (default: best available), with
        the settings saved in it (input size, HU window, conventions; the published ones for
        the authors' files) unless ``config`` is given."""
        model, report = load_sam2ct(Path(path), device or default_device(), config)
        return cls(model, config or SAM2CTConfig.from_dict(report.config), report)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def segment(self, volume: np.ndarray, spacing: tuple[float, float, float],
                prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """One boolean mask of ``volume``'s shape per prompt (``volume`` in HU, (z, rows, cols))."""
        return [mask for mask, _ in self.segment_scored(volume, spacing, prompts)]

    def segment_scored(self, volume: np.ndarray, spacing: tuple[float, float, float],
                       prompts: Sequence[Prompt]) -> list[tuple[np.ndarray, float]]:
        """``segment``'s masks, each with the model's own score (see the class docstring)."""
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"Invalid 'volume' shape {volume.shape} - expected (slices, rows, cols)")
        with self._lock:
            self.last_propagations = []
            return [self._segment_one(volume, prompt) for prompt in prompts]

    def _segment_one(self, volume: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float]:
        if not 0 <= prompt.slice_index < volume.shape[0]:
            raise ValueError(f"Invalid prompt '{prompt.identifier}' - slice {prompt.slice_index} "
                             f"outside the volume's {volume.shape[0]} slices")
        coords, labels = prompt_points(prompt, volume.shape[1:], self.config)
        with torch.inference_mode(), self._autocast():
            result = propagate(self.model, volume, coords, labels, prompt.slice_index,
                               self.config)
        self.last_propagations.append(result)
        mask = np.zeros(volume.shape, dtype=bool)
        for index, plane in result.masks.items():
            mask[index] = plane
        score = min(max(result.prompt_iou, 0.0), 1.0) * result.prompt_presence
        logger.debug("prompt %s: %d slices visited, %d with lesion, score %.3f",
                     prompt.identifier, len(result.visited), len(result.masks), score)
        return mask, score
