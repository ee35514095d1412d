"""8-slice training clips around a prompted slice, with prompts simulated from the label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.preprocess import (
    intensity_range,
    model_view,
    point_inputs,
    preprocess_slices,
    prompt_points,
)
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.simulate import simulate_prompt
from sam2ct.training.data import LesionCase

TRAIN_KINDS = (PromptKind.LINE, PromptKind.BIDIRECTIONAL, PromptKind.ARROW)


@dataclass
class Clip:
    """Slices in propagation order (first = prompted), targets, and the prompt's points."""

    images: torch.Tensor  # (T, 3, S, S)
    targets: torch.Tensor  # (T, S, S) float {0, 1}
    points: dict[str, torch.Tensor]
    prompt: Prompt
    slices: list[int]  # volume indices, in clip order

    def to(self, device: torch.device | str) -> Clip:
        """The same clip on ``device``."""
        return Clip(self.images.to(device), self.targets.to(device),
                    {k: v.to(device) for k, v in self.points.items()}, self.prompt, self.slices)


def pick_lesion(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 3D connected lesion of a label volume, chosen at random."""
    components, count = ndimage.label(np.asarray(label) > 0)
    if count == 0:
        raise ValueError("Invalid 'label' - no lesion voxels")
    return components == int(rng.integers(1, count + 1))


def clip_slices(prompt_index: int, num_slices: int, length: int, direction: int) -> list[int]:
    """``length`` slice indices from the prompt slice towards ``direction`` (clipped at the end)."""
    stop = num_slices if direction > 0 else -1
    return list(range(prompt_index, stop, direction))[:length]


def make_clip(case: LesionCase, config: SAM2CTConfig, rng: np.random.Generator,
              length: int = 8, kinds: tuple[PromptKind, ...] = TRAIN_KINDS) -> Clip:
    """A clip from ``case``: random lesion, simulated prompt of a random kind, random direction.

    Slices, targets and prompt points are what inference would feed the model for the same
    prompt: the same orientation (``model_view``) and intensity scaling of the whole volume.
    """
    lesion = pick_lesion(case.label, rng)
    kind = kinds[int(rng.integers(len(kinds)))]
    prompt = simulate_prompt(lesion, kind, case.spacing, rng)
    direction = 1 if rng.random() < 0.5 else -1
    slices = clip_slices(prompt.slice_index, case.image.shape[0], length, direction)
    if len(slices) < 2:  # the prompt on the first/last slice: go the other way
        slices = clip_slices(prompt.slice_index, case.image.shape[0], length, -direction)
    coords, labels = prompt_points(prompt, case.image.shape[1:], config)
    images = preprocess_slices(model_view(case.image, config)[slices], config,
                               scale=intensity_range(case.image, config))
    size = (config.image_size, config.image_size)
    masks = torch.as_tensor(model_view(lesion, config)[slices],
                            dtype=torch.float32).unsqueeze(1)
    targets = (F.interpolate(masks, size=size, mode="bilinear", align_corners=False) > 0.5)
    return Clip(images, targets[:, 0].float(), point_inputs(coords, labels), prompt, slices)
