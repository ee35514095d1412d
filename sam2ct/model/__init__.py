"""SAM2CT: SAM2.1 Hiera-T with arrow/line point labels, MCM memories and 3D propagation."""

from sam2ct.model.build import build_sam2_base, build_sam2ct
from sam2ct.model.checkpoint import (
    CheckpointError,
    CheckpointReport,
    inspect_checkpoint,
    load_sam2ct,
    save_checkpoint,
)
from sam2ct.model.config import PointLabel, SAM2CTConfig
from sam2ct.model.propagate import Propagation, propagate
from sam2ct.model.segmenter import SAM2CTSegmenter

__all__ = [
    "CheckpointError", "CheckpointReport", "PointLabel", "Propagation", "SAM2CTConfig",
    "SAM2CTSegmenter", "build_sam2_base", "build_sam2ct", "inspect_checkpoint", "load_sam2ct",
    "propagate", "save_checkpoint",
]
