"""3D propagation from the prompted slice, both directions, with the empty-mask stop rule.

Per slice: memory attention against the bank, SAM2's mask decoder, MCM memory encoding. Slices are
encoded only when propagation reaches them, in chunks of ``SAM2CTConfig.chunk_size`` on an
accelerator and of a size that suits the caches on the CPU (``slices_per_encode``). The same step
functions serve training (with gradients) and inference (under ``torch.inference_mode``). Each
stage runs inside a ``torch.profiler.record_function`` range ``sam2ct.<stage>`` (``STAGES``), so a
profiler run gives a per-stage breakdown; outside a profiler the ranges cost microseconds.

On CUDA a step is launch-bound (host time well above kernel time at 1024 px on an H100), so
inference there replays the tracking step from CUDA graphs once its shapes repeat
(``track_graphs``) and checks each step's mask only after launching the next (``looks_ahead``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from torch.profiler import record_function

from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.graphs import GraphCache
from sam2ct.model.memory import (
    MemoryBank,
    SliceMemory,
    attend,
    condition_features,
    encode_memory,
    gather_memories,
)
from sam2ct.model.postprocess import native_masks
from sam2ct.model.preprocess import (
    intensity_range,
    model_shape,
    model_view,
    point_inputs,
    preprocess_slices,
)

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
    low_res_logits: torch.Tensor  # (B, 1, S/4, S/4), the mask chosen
    high_res_logits: torch.Tensor  # (B, 1, S, S), the same upsampled (what memory encodes)
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
        multi, _, ious, low, high, obj_ptr, score = model._forward_sam_heads(
            backbone_features=conditioned, point_inputs=points, high_res_features=feats.high_res,
            multimask_output=multimask)
    with record_function("sam2ct.memory_encode"):
        mem_feat, mem_pos = encode_memory(model, conditioned, high, score, binarize)
    return StepOutput(multi, ious, low, high, score, SliceMemory(mem_feat, mem_pos, obj_ptr),
                      conditioned)


def prompt_step(model: SAM2Base, feats: SliceFeatures, points: dict[str, torch.Tensor],
                config: SAM2CTConfig, multimask: bool = False) -> StepOutput:
    """The prompted slice: no-memory features, decoder with the prompt (single mask, which the
    decoder replaces by the best of three when unstable and ``config.stability_multimask``)."""
    conditioned = condition_features(model, feats.vision_feat, feats.vision_pos,
                                     feats.feat_size, None, [0], 1)
    binarize = config.binarize_prompt_mask_for_memory and not model.training
    return _decode(model, feats, conditioned, points, multimask, binarize)


def track_step(model: SAM2Base, feats: SliceFeatures, banks: Sequence[MemoryBank],
               indices: Sequence[int], num_slices: int,
               graphs: GraphCache | None = None) -> StepOutput:
    """Propagated slices (one per batch row): memory attention against each row's bank, then
    the decoder without prompt, as the banks' config says (``track_multimask``). ``graphs``
    replays captured CUDA graphs where it can."""
    multimask = banks[0].config.track_multimask
    with record_function("sam2ct.memory_attention"):
        memory, memory_pos, num_ptr = gather_memories(model, banks, indices, num_slices)
    if graphs is not None:
        return _graphed_step(graphs, model, feats, memory, memory_pos, num_ptr, multimask)
    return attend_and_decode(model, feats, memory, memory_pos, num_ptr, multimask)


def attend_and_decode(model: SAM2Base, feats: SliceFeatures, memory: torch.Tensor,
                      memory_pos: torch.Tensor, num_ptr: int, multimask: bool) -> StepOutput:
    """The tracking step once its memories are gathered (what a CUDA graph captures).

    ``multimask``: take the best of the decoder's three masks by predicted IoU (with its
    pointer); else its single mask (and single-mask pointer), as published.
    """
    with record_function("sam2ct.memory_attention"):
        conditioned = attend(model, feats.vision_feat, feats.vision_pos, feats.feat_size,
                             memory, memory_pos, num_ptr)
    return _decode(model, feats, conditioned, None, multimask, False)


def _graphed_step(graphs: GraphCache, model: SAM2Base, feats: SliceFeatures,
                  memory: torch.Tensor, memory_pos: torch.Tensor, num_ptr: int,
                  multimask: bool) -> StepOutput:
    """``attend_and_decode`` through ``graphs``: tensors in, tensors out, rebuilt as a step."""
    def step(feat, pos, high0, high1, mem, mem_pos):
        out = attend_and_decode(model, SliceFeatures(feat, pos, feats.feat_size, [high0, high1]),
                                mem, mem_pos, num_ptr, multimask)
        return (out.multimask_logits, out.ious, out.low_res_logits, out.high_res_logits,
                out.object_score_logits, out.memory.features, out.memory.pos_enc,
                out.memory.obj_ptr, out.conditioned)

    multi, ious, low, high, score, mem_feat, mem_pos_enc, obj_ptr, conditioned = graphs.run(
        step, (feats.feat_size, num_ptr, multimask),
        [feats.vision_feat, feats.vision_pos, *feats.high_res, memory, memory_pos])
    return StepOutput(multi, ious, low, high, score,
                      SliceMemory(mem_feat, mem_pos_enc, obj_ptr), conditioned)


_GRAPHS: weakref.WeakKeyDictionary[SAM2Base, GraphCache] = weakref.WeakKeyDictionary()


def track_graphs(model: SAM2Base, config: SAM2CTConfig) -> GraphCache | None:
    """The model's CUDA graphs of the tracking step, if enabled, ready for a new propagation.

    Graphs are kept across propagations; a shape is captured when it repeats within one.

    Only on CUDA and with ``config.cuda_graphs``, and never while training (a graph replays
    the kernels it captured, without autograd).
    """
    device = next(model.parameters()).device
    if not config.cuda_graphs or device.type != "cuda" or torch.is_grad_enabled():
        return None
    if model not in _GRAPHS:
        _GRAPHS[model] = GraphCache()
    _GRAPHS[model].new_run()
    return _GRAPHS[model]


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

    Slices are seen as the model sees them (``model_view``) and scaled by the whole volume's
    ``intensity_range``. ``ahead`` slices per image-encoder call (default
    ``slices_per_encode``). Each slice is encoded once and leaves the cache when handed out.
    """

    def __init__(self, model: SAM2Base, volume: np.ndarray, config: SAM2CTConfig,
                 device: torch.device, ahead: int | None = None) -> None:
        self.model, self.config, self.device = model, config, device
        self.volume = model_view(volume, config)
        self.scale = intensity_range(volume, config)
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
                images = preprocess_slices(self.volume[lo:hi], self.config, self.device,
                                           self.scale)
                self.cache.update(zip(range(lo, hi), encode_images(self.model, images),
                                      strict=True))
            self.encoded += hi - lo
        return self.cache.pop(index)


@dataclass
class Propagation:
    """Native-grid masks of the visited slices, visiting order, and where each direction stopped.

    While it runs, ``logits`` holds each kept slice's low-resolution mask logits on the device;
    ``finish`` turns them into ``masks``, boolean numpy arrays on the volume's grid.
    ``prompt_iou`` and ``prompt_presence`` are the decoder's own heads on the prompted slice: the
    IoU it predicts for the mask it chose, and the sigmoid of its object score logit.
    """

    masks: dict[int, np.ndarray]
    visited: list[int]
    stopped_at: dict[int, int | None]  # direction -> first empty slice (None: reached the end)
    logits: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    prompt_iou: float | None = None
    prompt_presence: float | None = None

    def finish(self, shape: tuple[int, int], config: SAM2CTConfig) -> Propagation:
        """Kept slices' logits -> native masks, in one batch and one transfer to the host."""
        if self.logits:
            keys = list(self.logits)
            stacked = native_masks(torch.stack([self.logits[k] for k in keys]), shape, config)
            self.masks = dict(zip(keys, stacked, strict=True))
            self.logits = {}
        return self


def _present(low_res: torch.Tensor, shape: tuple[int, int], config: SAM2CTConfig
             ) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B,) whether each mask holds lesion on the native grid."""
    with record_function("sam2ct.resample"):
        logits = F.interpolate(low_res.float(), size=model_shape(shape, config),
                               mode="bilinear", align_corners=False)
        return (logits > 0).flatten(1).any(1)


def looks_ahead(device: torch.device) -> bool:
    """Whether propagation launches the next step before checking the last one's mask.

    On an accelerator the stop check (is the mask empty?) waits for the GPU; checking one step
    late lets the host queue the next step meanwhile, so host and GPU overlap. The price is one
    discarded slice per direction that stops early, which the CPU would compute for nothing.
    """
    return device.type != "cpu"


@dataclass
class _Step:
    """One lockstep step in flight: which slices, their logits, and whether each holds lesion."""

    directions: list[int]
    indices: list[int]
    logits: torch.Tensor  # (B, 1, h, w) low-resolution, on the device
    present: torch.Tensor  # (B,) bool, on the device


def propagate(model: SAM2Base, volume: np.ndarray, coords: np.ndarray, labels: np.ndarray,
              prompt_index: int, config: SAM2CTConfig, lookahead: bool | None = None
              ) -> Propagation:
    """Segment the lesion in 3D from labelled points on slice ``prompt_index``.

    ``volume`` is (z, rows, cols) HU; ``coords`` in the model input space (``prompt_points``).
    Encode and decode the prompt slice, then propagate to higher and to lower indices, each
    direction stopping at its first empty mask and reaching slice 0 / the last slice when the
    lesion does. An empty prompt-slice mask stops the higher direction at once, while the lower
    one still runs from the prompt memory, as the published code does. Each direction has its
    own non-conditioning memories and shares only the prompt memory, exactly as "clear, then
    propagate the other way"; the two run in lockstep as one batch of two, which halves the
    sequential steps. ``lookahead`` (default ``looks_ahead``) checks each step's mask after
    launching the next: the same computation (a slice launched past a stop is dropped), though
    the step after one direction stops then runs the other in a batch of two instead of one, so
    its values can differ in floating-point rounding. Call under ``torch.inference_mode``.
    """
    device = next(model.parameters()).device
    lookahead = looks_ahead(device) if lookahead is None else lookahead
    n, shape = volume.shape[0], tuple(volume.shape[1:])
    encoder = ChunkedEncoder(model, volume, config, device)
    first = prompt_step(model, encoder.get(prompt_index, +1),
                        point_inputs(coords, labels, device), config)
    result = Propagation({}, [prompt_index], {})
    active = [+1, -1]
    if bool(_present(first.low_res_logits, shape, config)[0]):
        result.logits[prompt_index] = first.low_res_logits[0]
    else:
        result.stopped_at[+1] = prompt_index
        active.remove(+1)
    result.prompt_iou, result.prompt_presence = prompt_heads(first)
    banks = {d: MemoryBank(config) for d in (+1, -1)}
    for bank in banks.values():
        bank.set_prompt(prompt_index, first.memory)
    graphs = track_graphs(model, config)
    pending, step = None, 0
    while active:
        step += 1
        for d in [d for d in active if not 0 <= prompt_index + d * step < n]:
            result.stopped_at[d] = None  # reached the end of the volume
            active.remove(d)
        launched = _launch_step(model, encoder, banks, active, prompt_index, step, n,
                                shape, graphs) if active else None
        if pending is not None:
            _resolve_step(pending, result, active)
        pending = launched
        if not lookahead and pending is not None:
            _resolve_step(pending, result, active)
            pending = None
    if pending is not None:
        _resolve_step(pending, result, active)
    return result.finish(shape, config)


def prompt_heads(step: StepOutput) -> tuple[float, float]:
    """(predicted IoU of the chosen mask, sigmoid of the object score logit) of a step's first
    row: the chosen mask is the one of highest predicted IoU when the decoder gave several, else
    its single (or stability-replaced) one, so the highest IoU is the chosen mask's either way."""
    iou = step.ious[0].float().max()
    presence = torch.sigmoid(step.object_score_logits[0, 0].float())
    chosen, present = torch.stack([iou, presence]).tolist()
    return chosen, present


def _launch_step(model: SAM2Base, encoder: ChunkedEncoder, banks: dict[int, MemoryBank],
                 active: list[int], start: int, step: int, n: int, shape: tuple[int, int],
                 graphs: GraphCache | None = None) -> _Step:
    """Queue one lockstep step: slice ``start + d * step`` for each active direction ``d``.

    Each slice's memory enters its direction's bank at once; if the mask turns out empty the
    direction stops and that memory is never read.
    """
    indices = [start + d * step for d in active]
    feats = stack_features([encoder.get(i, d) for i, d in zip(indices, active, strict=True)])
    out = track_step(model, feats, [banks[d] for d in active], indices, n, graphs)
    for row, (d, index) in enumerate(zip(active, indices, strict=True)):
        banks[d].add(index, out.memory.row(row))
    return _Step(list(active), indices, out.low_res_logits,
                 _present(out.low_res_logits, shape, encoder.config))


def _resolve_step(step: _Step, result: Propagation, active: list[int]) -> None:
    """Record a finished step: keep non-empty masks, stop each direction at its first empty one.

    Rows past a direction's stop (launched before the stop was known) are dropped unseen.
    """
    present = step.present.tolist()  # waits for this step only
    for row, (d, index) in enumerate(zip(step.directions, step.indices, strict=True)):
        if result.stopped_at.get(d) is not None:
            continue  # launched ahead of an empty slice
        result.visited.append(index)
        if not present[row]:
            result.stopped_at[d] = index
            if d in active:
                active.remove(d)
            continue
        result.logits[index] = step.logits[row]
