"""Decoder logits -> masks on the series' grid, as the published inference code makes them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.morphology import remove_small_holes
from torch.profiler import record_function

from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.preprocess import model_shape, model_view

HOLE_FILL_SCORE = 0.1  # what SAM2's video predictor writes into a filled hole


def fill_small_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """Background components (8-connected, logits <= 0) of at most ``max_area`` pixels set to
    a small positive score, slice by slice, as SAM2's ``fill_holes_in_mask_scores`` does.

    ``logits`` is (B, h, w); a new array is returned.
    """
    out = np.array(logits, dtype=np.float32)
    for plane in out:
        foreground = plane > 0
        holes = remove_small_holes(foreground, max_size=max_area, connectivity=2) & ~foreground
        plane[holes] = HOLE_FILL_SCORE
    return out


def native_masks(low_res: torch.Tensor, shape: tuple[int, int], config: SAM2CTConfig
                 ) -> np.ndarray:
    """(B, 1, h, w) low-resolution logits in the model's view -> (B, rows, cols) boolean masks.

    Small holes filled (``config.fill_hole_area``), bilinear resize straight to the slice's
    size (as SAM2's video predictor resizes to the video's), threshold at 0, then back from the
    model's view to the series' orientation. One transfer to the host.
    """
    with record_function("sam2ct.resample"):
        logits = low_res.float()
        if config.fill_hole_area > 0:
            filled = fill_small_holes(logits[:, 0].cpu().numpy(), config.fill_hole_area)
            logits = torch.from_numpy(filled).to(logits.device)[:, None]
        logits = F.interpolate(logits, size=model_shape(shape, config), mode="bilinear",
                               align_corners=False)
        return model_view((logits[:, 0] > 0).cpu().numpy(), config)
