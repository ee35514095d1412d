"""SAM2CT fine-tuning: cases, simulated-prompt clips, SAM2's loss recipe, the training loop."""

from sam2ct.training.clips import Clip, make_clip
from sam2ct.training.data import LesionCase, find_nifti_pairs, load_nifti_cases
from sam2ct.training.loop import TrainConfig, TrainResult, clip_loss, train, train_step
from sam2ct.training.loss import LossWeights, frame_loss

__all__ = [
    "Clip", "LesionCase", "LossWeights", "TrainConfig", "TrainResult", "clip_loss",
    "find_nifti_pairs", "frame_loss", "load_nifti_cases", "make_clip", "train", "train_step",
]
