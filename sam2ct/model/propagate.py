"""3D propagation from the prompted slice, both directions, with the empty-mask stop rule.

Per slice: memory attention against the bank, SAM2's mask decoder, MCM memory encoding. Slices are
encoded only when propagation reaches them, in chunks of ``SAM2CTConfig.chunk_size`` on an
accelerator and of a size that suits the caches on the CPU (``slices_per_encode``). The same step
functions serve training (with gradients) and inference (under ``torch.inference_mode``). Each
stage runs inside a ``torch.profiler.record_function`` range ``sam2ct.<stage>`` (``STAGES``), so a
profiler run gives a per-stage breakdown; outside a profiler the ranges cost microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from torch.profiler import record_function

from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.memory import MemoryBank, SliceMemory, condition_features, encode_memory
from sam2ct.model.preprocess import point_inputs, preprocess_slices

STAGES = ("encode", "memory_attention", "decode", "memory_encode", "resample")


@dataclass
class SliceFeatures:
    """Image-encoder output of one or more slices, ready for SAM2's heads."""

    vision_feat: torch.Tensor  # (HW, B, C) stride-16 features
    vision_pos: torch.Tensor  # (HW, B, C)
    feat_size: tuple[int, int]
    high_res: list[torch.Tensor]  # [(B, 32, 4H, 4W), (B, 64, 2H, 2W)] for the mask decoder


@dataclass
class StepOutput:
    """One slice's prediction: logits, scores, and the memory it leaves behind."""

    multimask_logits: torch.Tensor  # (B, M, S/4, S/4)
    ious: torch.Tensor  # (B, M)
    high_res_logits: torch.Tensor  # (B, 1, S, S), best mask
    object_score_logits: torch.Tensor  # (B, 1)
    memory: SliceMemory
    conditioned: torch.Tensor = field(repr=False)  # (B, C, H, W), what the memory encoder got


def encode_images(model: SAM2Base, images: torch.Tensor) -> list[SliceFeatures]:
    """Run the image encoder on (n, 3, S, S) images; one SliceFeatures per image."""
    backbone = model.forward_image(images)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    fpn = backbone["backbone_fpn"]
    return [SliceFeatures(feats[-1][:, k:k + 1], pos[-1][:, k:k + 1], sizes[-1],
                          [fpn[0][k:k + 1], fpn[1][k:k + 1]])
            for k in range(images.shape[0])]


def _decode(model: SAM2Base, feats: SliceFeatures, conditioned: torch.Tensor,
            points: dict[str, torch.Tensor] | None, multimask: bool, binarize: bool
            ) -> StepOutput:
    """Mask decoder on memory-conditioned features, then MCM memory encoding."""
    with record_function("sam2ct.decode"):
        multi, _, ious, _, high, obj_ptr, score = model._forward_sam_heads(
            backbone_features=conditioned, point_inputs=points, high_res_features=feats.high_res,
            multimask_output=multimask)
    with record_function("sam2ct.memory_encode"):
        mem_feat, mem_pos = encode_memory(model, conditioned, high, score, binarize)
    return StepOutput(multi, ious, high, score, SliceMemory(mem_feat, mem_pos, obj_ptr),
                      conditioned)


def prompt_step(model: SAM2Base, feats: SliceFeatures, points: dict[str, torch.Tensor],
                config: SAM2CTConfig, multimask: bool = False) -> StepOutput:
    """The prompted slice: no-memory features, decoder with the prompt (single mask)."""
    conditioned = condition_features(model, feats.vision_feat, feats.vision_pos,
                                     feats.feat_size, None, [0], 1)
    binarize = config.binarize_prompt_mask_for_memory and not model.training
    return _decode(model, feats, conditioned, points, multimask, binarize)


def track_step(model: SAM2Base, feats: SliceFeatures, banks: Sequence[MemoryBank],
               indices: Sequence[int], num_slices: int) -> StepOutput:
    """Propagated slices (one per batch row): memory attention against each row's bank, then
    the decoder without prompt."""
    with record_function("sam2ct.memory_attention"):
        conditioned = condition_features(model, feats.vision_feat, feats.vision_pos,
                                         feats.feat_size, banks, indices, num_slices)
    multimask = model.multimask_output_in_sam and model.multimask_output_for_tracking
    return _decode(model, feats, conditioned, None, multimask, False)


def stack_features(parts: Sequence[SliceFeatures]) -> SliceFeatures:
    """Several slices' features as one batch (rows in the given order)."""
    if len(parts) == 1:
        return parts[0]
    return SliceFeatures(torch.cat([p.vision_feat for p in parts], dim=1),
                         torch.cat([p.vision_pos for p in parts], dim=1), parts[0].feat_size,
                         [torch.cat([p.high_res[k] for p in parts]) for k in range(2)])


CPU_PIXELS_PER_ENCODE = 4 * 256 * 256  # image-encoder input pixels per call on the CPU


def slices_per_encode(config: SAM2CTConfig, device: torch.device) -> int:
    """Slices encoded per image-encoder call: ``chunk_size`` on an accelerator, fewer on the CPU.

    A batch keeps a GPU busy. On the CPU a batch saves per-call overhead only while its
    activations stay in the caches: single thread, least CPU time per slice at batch 8 for
    128 px, 4 for 256 px, 1 for 512 px (batch 8 there costs 16% more). So a CPU batch holds
    about ``CPU_PIXELS_PER_ENCODE`` pixels; at 512 px and more it is one slice, and no slice
    beyond a direction's first empty mask is encoded.
    """
    if device.type != "cpu":
        return config.chunk_size
    return max(1, min(config.chunk_size, CPU_PIXELS_PER_ENCODE // config.image_size ** 2))


class ChunkedEncoder:
    """Encodes slices of a (z, rows, cols) HU volume in chunks, in the direction of travel.

    ``ahead`` slices per image-encoder call (default ``slices_per_encode``). Each slice is
    encoded once and leaves the cache when it is handed out.
    """

    def __init__(self, model: SAM2Base, volume: np.ndarray, config: SAM2CTConfig,
                 device: torch.device, ahead: int | None = None) -> None:
        self.model, self.volume, self.config, self.device = model, volume, config, device
        self.ahead = ahead or slices_per_encode(config, device)
        self.cache: dict[int, SliceFeatures] = {}
        self.encoded = 0

    def get(self, index: int, direction: int) -> SliceFeatures:
        """Features of slice ``index``; encodes the next chunk towards ``direction`` if needed."""
        if index not in self.cache:
            n, size = self.volume.shape[0], self.ahead
            lo, hi = (index, min(n, index + size)) if direction >= 0 else \
                (max(0, index - size + 1), index + 1)
            with record_function("sam2ct.encode"):
                images = preprocess_slices(self.volume[lo:hi], self.config, self.device)
                self.cache.update(zip(range(lo, hi), encode_images(self.model, images),
                                      strict=True))
            self.encoded += hi - lo
        return self.cache.pop(index)


@dataclass
class Propagation:
    """Native-grid masks of the visited slices, visiting order, and where each direction stopped.

    ``propagate`` returns masks as numpy arrays (kept on the device until the end).
    """

    masks: dict[int, np.ndarray]
    visited: list[int]
    stopped_at: dict[int, int | None]  # direction -> first empty slice (None: reached the end)

    def to_numpy(self) -> Propagation:
        """Masks moved to the host as numpy arrays (one transfer at the end)."""
        if self.masks:
            keys = list(self.masks)
            stacked = torch.stack([torch.as_tensor(self.masks[k]) for k in keys]).cpu().numpy()
            self.masks = dict(zip(keys, stacked, strict=True))
        return self


def _native(high_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, 1, S, S) logits -> boolean (B, rows, cols) masks on the native grid (same device)."""
    with record_function("sam2ct.resample"):
        logits = F.interpolate(high_res.float(), size=shape, mode="bilinear", align_corners=False)
        return logits[:, 0] > 0


def propagate(model: SAM2Base, volume: np.ndarray, coords: np.ndarray, labels: np.ndarray,
              prompt_index: int, config: SAM2CTConfig) -> Propagation:
    """Segment the lesion in 3D from labelled points on slice ``prompt_index``.

    Encode and decode the prompt slice, then propagate to higher and to lower indices, each
    direction stopping at its first empty mask and reaching slice 0 / the last slice when the
    lesion does. Each direction has its own non-conditioning memories and shares only the prompt
    memory, exactly as "clear, then propagate the other way"; the two run in lockstep as one
    batch of two, which halves the sequential steps. Call under ``torch.inference_mode``.
    """
    device = next(model.parameters()).device
    n, shape = volume.shape[0], tuple(volume.shape[1:])
    encoder = ChunkedEncoder(model, volume, config, device)
    first = prompt_step(model, encoder.get(prompt_index, +1),
                        point_inputs(coords, labels, device), config)
    result = Propagation({prompt_index: _native(first.high_res_logits, shape)[0]},
                         [prompt_index], {})
    if not result.masks[prompt_index].any():
        return result.to_numpy()
    banks = {d: MemoryBank(config) for d in (+1, -1)}
    for bank in banks.values():
        bank.set_prompt(prompt_index, first.memory)
    active = [+1, -1]
    step = 0
    while active:
        step += 1
        for d in [d for d in active if not 0 <= prompt_index + d * step < n]:
            result.stopped_at[d] = None  # reached the end of the volume
            active.remove(d)
        if active:
            _step_directions(model, encoder, banks, active, prompt_index, step, n,
                             shape, result)
    return result.to_numpy()


def _step_directions(model: SAM2Base, encoder: ChunkedEncoder, banks: dict[int, MemoryBank],
                     active: list[int], start: int, step: int, n: int, shape: tuple[int, int],
                     result: Propagation) -> None:
    """One lockstep step: slice ``start + d * step`` for each active direction ``d``."""
    indices = [start + d * step for d in active]
    feats = stack_features([encoder.get(i, d) for i, d in zip(indices, active, strict=True)])
    out = track_step(model, feats, [banks[d] for d in active], indices, n)
    masks = _native(out.high_res_logits, shape)  # stays on the device: one sync per step
    present = (out.high_res_logits > 0).flatten(1).any(1).tolist()
    for row, (d, index) in enumerate(zip(list(active), indices, strict=True)):
        result.visited.append(index)
        if not present[row]:
            result.stopped_at[d] = index
            active.remove(d)
            continue
        result.masks[index] = masks[row]
        banks[d].add(index, out.memory.row(row))
