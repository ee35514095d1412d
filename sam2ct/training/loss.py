"""SAM2's video fine-tuning loss: focal (20) + Dice (1) + IoU prediction (1) + object score (1).

As in SAM2's ``MultiStepMultiMasksAndIous``: with several candidate masks only the one with the
lowest focal + Dice loss is supervised; the IoU head regresses (L1) that mask's real IoU; mask
losses count only on slices where the object is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of SAM2's recipe."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask, mean over pixels: (B, M, H, W) -> (B, M)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per mask: (B, M, H, W) -> (B, M)."""
    prob = logits.sigmoid().flatten(2)
    target = target.flatten(2)
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def actual_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks with the target: (B, M)."""
    pred = (logits > 0).flatten(2)
    gt = target.flatten(2) > 0.5
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


def frame_loss(multimask_logits: torch.Tensor, ious: torch.Tensor, object_score: torch.Tensor,
               target: torch.Tensor, weights: LossWeights = LossWeights()
               ) -> dict[str, torch.Tensor]:
    """Loss parts of one slice. ``multimask_logits`` (B, M, h, w), ``target`` (B, H, W) in {0, 1}."""
    size = target.shape[-2:]
    logits = multimask_logits.float()
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    tgt = target.float().unsqueeze(1).expand_as(logits)
    focal, dice = focal_loss(logits, tgt), dice_loss(logits, tgt)
    best = torch.argmin(focal * weights.focal + dice, dim=-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    present = target.flatten(1).any(-1).float()  # (B,)
    iou_l1 = (ious.float() - actual_iou(logits, tgt).detach()).abs()
    score = F.binary_cross_entropy_with_logits(object_score.float().squeeze(-1), present)
    parts = {"focal": (focal[rows, best] * present).mean(),
             "dice": (dice[rows, best] * present).mean(),
             "iou": (iou_l1[rows, best] * present).mean(),
             "object_score": score}
    parts["total"] = (weights.focal * parts["focal"] + weights.dice * parts["dice"]
                      + weights.iou * parts["iou"] + weights.object_score * parts["object_score"])
    return parts
