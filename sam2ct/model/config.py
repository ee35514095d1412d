"""SAM2CT's fixed design numbers and our tunable choices, kept apart from the code that uses them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # SAM2.1 Hiera-Tiny, as published
MODEL_INPUT_SIZE = 1024  # the published model input size (x and y)


class PointLabel(IntEnum):
    """Point labels of SAM2CT's prompt encoder (0-3 are SAM2's own, 4-7 are SAM2CT's)."""

    PADDING = -1
    NEGATIVE = 0
    POSITIVE = 1
    BOX_TOP_LEFT = 2
    BOX_BOTTOM_RIGHT = 3
    LINE_END = 4
    ARROW_SECOND = 5
    ARROW_HEAD = 6
    MASK_POINT = 7  # reserved, unused at inference


NUM_POINT_LABELS = 8  # learned point embeddings in SAM2CT (SAM2 has 4)
SAM2_POINT_LABELS = 4


@dataclass(frozen=True)
class SAM2CTConfig:
    """How a SAM2CT model is built and run.

    ``image_size`` is the model input size (1024 as published; smaller sizes build the same
    weights and serve tests). ``mem_distance`` / ``ptr_distance``: the memory bank keeps
    non-conditioning memories of slices at |d| <= 6 and object pointers at |d| <= 8.
    ``chunk_size``: slices encoded per image-encoder batch on an accelerator (at most; the CPU
    uses fewer, see ``propagate.slices_per_encode``). ``arrow_second_point`` *(choice)*: distance in 1024-space pixels
    from the arrow head to the label-5 point along head->tail.
    ``hu_window``: HU clipped to this range then scaled to [0, 1]. ``cuda_graphs``: replay the
    tracking step from CUDA graphs once its shapes repeat (CUDA inference only; on an H100
    87 -> 128 slices/s, same masks).

    The conventions of the published inference code (``PUBLISHED``; ``LEGACY`` are the values
    our checkpoints were trained with before they were named), saved in every checkpoint:

    ``transpose_slices``: the model sees each slice transposed (its image rows are the DICOM
    columns), as the authors' NIfTI ``[i, j]`` planes are. ``volume_min_max``: after the HU clip,
    scale by the clipped *volume's* minimum and maximum instead of the window's bounds.
    ``track_multimask``: tracked slices take the best of the decoder's three masks by predicted
    IoU (and that mask's pointer) instead of its single mask. ``stability_multimask``: the single
    mask is replaced by the best of three when it is unstable (SAM2's dynamic multimask:
    ``stability_delta``, ``stability_threshold``). ``pointer_tpos_frames``: object-pointer
    positions are divided by ``min(this, max_obj_ptrs_in_encoder) - 1`` (None: by the number of
    slices, capped the same way). ``fill_hole_area``: background holes of at most this many
    low-resolution mask pixels are filled in the output masks. The published network asks for 8,
    but SAM2 fills them only with its CUDA extension and skips the step without it (every CPU
    run, the parity cases' too); 0, the default, is what the published code computes there, 8
    what it computes on a CUDA machine with the extension built.

    Example
    -------
    >>> SAM2CTConfig(image_size=256).feature_size
    16
    """

    image_size: int = MODEL_INPUT_SIZE
    num_maskmem: int = 7
    mem_distance: int = 6
    ptr_distance: int = 8
    chunk_size: int = 8
    arrow_second_point: float = 64.0
    hu_window: tuple[float, float] = (-500.0, 500.0)
    binarize_prompt_mask_for_memory: bool = True
    cuda_graphs: bool = True
    transpose_slices: bool = True
    volume_min_max: bool = True
    track_multimask: bool = False
    stability_multimask: bool = True
    stability_delta: float = 0.05
    stability_threshold: float = 0.98
    pointer_tpos_frames: int | None = 8
    fill_hole_area: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 64 or self.image_size % 64:
            raise ValueError(f"Invalid 'image_size' value {self.image_size} - a multiple of 64 needed")
        if self.chunk_size < 1:
            raise ValueError(f"Invalid 'chunk_size' value {self.chunk_size} - must be >= 1")
        if not 1 <= self.mem_distance < self.num_maskmem:
            raise ValueError(f"Invalid 'mem_distance' value {self.mem_distance} - must be in "
                             f"1..{self.num_maskmem - 1} for {self.num_maskmem} memory slots")
        if self.ptr_distance < 0 or self.arrow_second_point <= 0:
            raise ValueError("Invalid 'ptr_distance' / 'arrow_second_point' - must be positive")
        low, high = self.hu_window
        if not low < high:
            raise ValueError(f"Invalid 'hu_window' value {self.hu_window} - low must be < high")
        if self.pointer_tpos_frames is not None and self.pointer_tpos_frames < 2:
            raise ValueError(f"Invalid 'pointer_tpos_frames' value {self.pointer_tpos_frames} "
                             "- must be >= 2 or None")
        if self.fill_hole_area < 0:
            raise ValueError(f"Invalid 'fill_hole_area' value {self.fill_hole_area} - must be >= 0")

    @property
    def feature_size(self) -> int:
        """Side of the stride-16 image embedding."""
        return self.image_size // 16

    def to_dict(self) -> dict[str, Any]:
        """Plain values, stored in checkpoints next to the weights."""
        data = asdict(self)
        data["hu_window"] = list(self.hu_window)
        return data

    def conventions(self) -> dict[str, Any]:
        """The settings that make this model compute as the published code does (or not)."""
        data = self.to_dict()
        return {name: data[name] for name in CONVENTIONS}

    def conventions_name(self) -> str:
        """``published``, ``legacy`` (our checkpoints before the conventions were named), or
        ``custom: <settings that differ from the published ones>``."""
        own = self.conventions()
        if own == PUBLISHED:
            return "published"
        if own == LEGACY:
            return "legacy"
        return "custom: " + ", ".join(f"{k}={v}" for k, v in own.items() if PUBLISHED[k] != v)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAM2CTConfig:
        """Inverse of ``to_dict``; unknown keys are ignored (older/newer checkpoints).

        A convention missing from ``data`` takes its ``LEGACY`` value: a dict saved before the
        conventions were named comes from a model trained with those.
        """
        data = {**LEGACY, **data}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "hu_window" in known:
            known["hu_window"] = tuple(float(v) for v in known["hu_window"])
        return cls(**known)


#: the settings that are conventions of the authors' published inference code (parity README);
#: their dataclass defaults are the published values
CONVENTIONS = ("transpose_slices", "volume_min_max", "track_multimask", "stability_multimask",
               "stability_delta", "stability_threshold", "pointer_tpos_frames", "fill_hole_area")
PUBLISHED: dict[str, Any] = {name: SAM2CTConfig.__dataclass_fields__[name].default
                             for name in CONVENTIONS}
#: what our checkpoints saved before the conventions were named were trained and run with
LEGACY: dict[str, Any] = {**PUBLISHED, "transpose_slices": False, "volume_min_max": False,
                          "track_multimask": True, "stability_multimask": False,
                          "pointer_tpos_frames": None, "fill_hole_area": 0}
