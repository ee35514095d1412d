"""SAM2CT's memory bank, temporal-encoding convention and MCM (memory-conditioned memories).

Conventions (sam2ct-model.md): the prompt (conditioning) memory is always attended to, with
temporal encoding index ``num_maskmem - 1`` (6); a non-conditioning memory at slice distance d
(|d| <= 6) gets index ``6 - |d|``, the reverse of SAM2's ``|d| - 1``. Object pointers come from
|d| <= 8, the prompt's at position 0, their positions divided by
``min(pointer_tpos_frames, max_obj_ptrs_in_encoder) - 1`` (7 as published). MCM: a slice's memory is encoded from its features *after*
memory attention, not from the raw image-encoder features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import get_1d_sine_pe

from sam2ct.model.config import SAM2CTConfig


@dataclass
class SliceMemory:
    """What one slice leaves in the bank: spatial memory, its position encoding, object pointer."""

    features: torch.Tensor  # (B, mem_dim, h, w)
    pos_enc: torch.Tensor  # (B, mem_dim, h, w)
    obj_ptr: torch.Tensor  # (B, hidden_dim)

    def row(self, b: int) -> SliceMemory:
        """Batch row ``b`` as a memory of its own (batch 1)."""
        return SliceMemory(self.features[b:b + 1], self.pos_enc[b:b + 1], self.obj_ptr[b:b + 1])


@dataclass
class MemoryBank:
    """The prompt memory plus recent memories of the direction being propagated.

    Example
    -------
    >>> bank = MemoryBank(SAM2CTConfig())  # doctest: +SKIP
    >>> bank.set_prompt(40, memory); bank.add(41, memory)  # doctest: +SKIP
    """

    config: SAM2CTConfig
    prompt_index: int | None = None
    prompt: SliceMemory | None = None
    recent: dict[int, SliceMemory] = field(default_factory=dict)
    _table: torch.Tensor | None = field(default=None, repr=False)
    _table_key: tuple | None = field(default=None, repr=False)

    def set_prompt(self, index: int, memory: SliceMemory) -> None:
        """Store the conditioning memory (kept for the whole propagation)."""
        self.prompt_index, self.prompt = index, memory

    def add(self, index: int, memory: SliceMemory) -> None:
        """Store a non-conditioning memory; forget those too far to be used again."""
        self.recent[index] = memory
        keep = max(self.config.mem_distance, self.config.ptr_distance)
        for old in [i for i in self.recent if abs(i - index) >= keep]:
            del self.recent[old]

    def clear(self) -> None:
        """Drop non-conditioning memories (between the two propagation directions)."""
        self.recent.clear()

    def _position_table(self, model: SAM2Base, t_max: int, channels: int,
                        device: torch.device) -> torch.Tensor:
        """Projected sine encodings of pointer positions 0..ptr_distance (cached per t_max)."""
        key = (t_max, str(device), torch.is_inference_mode_enabled(), model.training)
        if self._table_key != key:
            pos = torch.arange(self.config.ptr_distance + 1, device=device, dtype=torch.float32)
            self._table = get_1d_sine_pe(pos / t_max, dim=channels)
            self._table_key = key
        return model.obj_ptr_tpos_proj(self._table)

    def tpos_index(self, distance: int | None) -> int:
        """Temporal-encoding row of a memory: SAM2CT's ``6 - |d|``; 6 for the prompt (None)."""
        last = self.config.num_maskmem - 1
        return last if distance is None else last - abs(distance)

    def gather(self, model: SAM2Base, index: int, num_slices: int
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory tokens, their position encodings (L, B, mem_dim) and the pointer-token count."""
        if self.prompt is None or self.prompt_index is None:
            raise ValueError("Invalid 'MemoryBank' - no prompt memory stored before propagation")
        tokens, pos = [], []
        spatial = [(None, self.prompt)] + [
            (abs(index - i), m) for i, m in self.recent.items()
            if 1 <= abs(index - i) <= self.config.mem_distance]
        for distance, mem in spatial:
            tokens.append(mem.features.flatten(2).permute(2, 0, 1))
            enc = mem.pos_enc.flatten(2).permute(2, 0, 1)
            pos.append(enc + model.maskmem_tpos_enc[self.tpos_index(distance)])
        ptr_tokens, ptr_pos = self._pointers(model, index, num_slices)
        return (torch.cat(tokens + [ptr_tokens]), torch.cat(pos + [ptr_pos]),
                ptr_tokens.shape[0])

    def _pointers(self, model: SAM2Base, index: int, num_slices: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object-pointer tokens: the prompt's at position 0, then slices at |d| <= ptr_distance."""
        if self.prompt is None:
            raise ValueError("Invalid 'MemoryBank' - no prompt memory stored before propagation")
        items = [(0, self.prompt.obj_ptr)] + sorted((
            (abs(index - i), m.obj_ptr) for i, m in self.recent.items()
            if 1 <= abs(index - i) <= self.config.ptr_distance), key=lambda item: item[0])
        positions = [p for p, _ in items]
        ptrs_t = torch.stack([ptr for _, ptr in items])  # (P, B, C)
        n, batch, channels = ptrs_t.shape
        mem_dim = model.mem_dim
        frames = self.config.pointer_tpos_frames or num_slices  # published: 8, not the volume
        t_max = max(1, min(frames, model.max_obj_ptrs_in_encoder) - 1)
        enc = self._position_table(model, t_max, channels, ptrs_t.device)
        if positions == list(range(n)):  # consecutive slices: no host-to-device copy
            enc = enc[:n]
        else:
            enc = enc[torch.tensor(positions).to(ptrs_t.device)]
        enc = enc.unsqueeze(1).expand(-1, batch, mem_dim)
        split = channels // mem_dim  # a pointer becomes C / mem_dim tokens
        ptrs_t = ptrs_t.reshape(n, batch, split, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        return ptrs_t, enc.repeat_interleave(split, dim=0)


def gather_memories(model: SAM2Base, banks: Sequence[MemoryBank], indices: Sequence[int],
                    num_slices: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Memory tokens and position encodings (L, B, mem_dim) of a batch, and the pointer count.

    Batch row ``b`` is slice ``indices[b]`` reading ``banks[b]``; rows must gather the same
    number of memories, as the two propagation directions do in lockstep.
    """
    if len(banks) != len(indices):
        raise ValueError(f"Invalid 'banks' - {len(banks)} banks for {len(indices)} indices")
    gathered = [bank.gather(model, i, num_slices) for bank, i in zip(banks, indices, strict=True)]
    if len({(g[0].shape[0], g[2]) for g in gathered}) != 1:
        raise ValueError("Invalid 'banks' - batch rows hold different numbers of memories")
    return (torch.cat([g[0] for g in gathered], dim=1), torch.cat([g[1] for g in gathered], dim=1),
            gathered[0][2])


def attend(model: SAM2Base, vision_feat: torch.Tensor, vision_pos: torch.Tensor,
           feat_size: tuple[int, int], memory: torch.Tensor | None,
           memory_pos: torch.Tensor | None, num_ptr: int = 0) -> torch.Tensor:
    """Memory attention: (HW, B, C) features -> memory-conditioned (B, C, H, W).

    Without memory (the prompt slice) the result is the image features plus SAM2's no-memory
    embedding, as SAM2.1 with ``directly_add_no_mem_embed`` does.
    """
    hw, batch, channels = vision_feat.shape
    if memory is None:
        out = vision_feat + model.no_mem_embed
    else:
        if memory.shape[1] != batch:
            raise ValueError(f"Invalid 'memory' - batch {memory.shape[1]} for {batch} slices")
        out = model.memory_attention(curr=[vision_feat], curr_pos=[vision_pos], memory=memory,
                                     memory_pos=memory_pos, num_obj_ptr_tokens=num_ptr)
    return out.permute(1, 2, 0).reshape(batch, channels, *feat_size)


def condition_features(model: SAM2Base, vision_feat: torch.Tensor, vision_pos: torch.Tensor,
                       feat_size: tuple[int, int], banks: Sequence[MemoryBank] | None,
                       indices: Sequence[int], num_slices: int) -> torch.Tensor:
    """``attend`` to what ``banks`` hold for ``indices`` (no memory when ``banks`` is None)."""
    if banks is None:
        return attend(model, vision_feat, vision_pos, feat_size, None, None)
    if len(banks) != vision_feat.shape[1]:
        raise ValueError(f"Invalid 'banks' - {len(banks)} banks for a batch of "
                         f"{vision_feat.shape[1]}")
    return attend(model, vision_feat, vision_pos, feat_size,
                  *gather_memories(model, banks, indices, num_slices))


def encode_memory(model: SAM2Base, conditioned: torch.Tensor, high_res_masks: torch.Tensor,
                  object_score_logits: torch.Tensor, binarize: bool) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """MCM: the memory encoder fed with the memory-conditioned features and the predicted mask.

    Same mask scaling and no-object embedding as SAM2's ``_encode_new_memory``; only the
    features differ (memory-attended instead of raw image features).
    """
    mask = (high_res_masks > 0).to(high_res_masks.dtype) if binarize else \
        torch.sigmoid(high_res_masks)
    mask = mask * model.sigmoid_scale_for_mem_enc + model.sigmoid_bias_for_mem_enc
    out = model.memory_encoder(conditioned, mask, skip_mask_sigmoid=True)
    features, pos_enc = out["vision_features"], out["vision_pos_enc"][-1]
    if model.no_obj_embed_spatial is not None:
        absent = 1 - (object_score_logits > 0).to(features.dtype)
        features = features + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None]
    return features, pos_enc
