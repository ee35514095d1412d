"""The training loop: AMP, resume, checkpoints in the published layout, progress and loss logs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base

from sam2ct.model.checkpoint import read_checkpoint, save_checkpoint
from sam2ct.model.config import SAM2CTConfig
from sam2ct.model.memory import MemoryBank
from sam2ct.model.propagate import encode_images, prompt_step, track_step
from sam2ct.training.clips import Clip, make_clip
from sam2ct.training.data import LesionCase
from sam2ct.training.loss import LossWeights, frame_loss

logger = logging.getLogger(__name__)
LAST = "last.pt"  # resumable: model + optimizer + step
FINAL = "sam2ct.pt"  # the published layout, for `sam2ct segment --model`
LOG = "train_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (our design; the authors did not publish theirs)."""

    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.01
    clip_length: int = 8
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    amp: bool = True  # bfloat16 autocast on CUDA (no effect on the CPU)
    grad_clip: float = 0.1
    weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.clip_length < 2 or self.lr <= 0:
            raise ValueError(f"Invalid training config - steps {self.steps} >= 1, clip_length "
                             f"{self.clip_length} >= 2 and lr {self.lr} > 0 are needed")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA, nothing elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_loss(model: SAM2Base, clip: Clip, config: SAM2CTConfig,
              weights: LossWeights | None = None) -> dict[str, torch.Tensor]:
    """Forward a clip as propagation does (prompt, then memory + MCM) and average the losses.

    Decoded as inference decodes (``prompt_step``, ``track_step`` with ``config``'s
    conventions); the object-pointer positions follow ``config.pointer_tpos_frames``.
    """
    weights = weights or LossWeights()
    feats = encode_images(model, clip.images)
    outs = [prompt_step(model, feats[0], clip.points, config)]
    bank = MemoryBank(config)
    bank.set_prompt(0, outs[0].memory)
    for t in range(1, len(feats)):
        outs.append(track_step(model, feats[t], [bank], [t], len(feats)))
        bank.add(t, outs[-1].memory)
    parts = [frame_loss(o.multimask_logits, o.ious, o.object_score_logits,
                        clip.targets[t:t + 1], weights) for t, o in enumerate(outs)]
    return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}


def train_step(model: SAM2Base, optimizer: torch.optim.Optimizer, clip: Clip,
               config: SAM2CTConfig, train: TrainConfig) -> dict[str, float]:
    """One optimisation step on one clip; returns the loss parts as floats."""
    device = next(model.parameters()).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, train.amp):
        parts = clip_loss(model, clip.to(device), config, train.weights)
    parts["total"].backward()
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in parts.items()}


def make_optimizer(model: SAM2Base, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters."""
    return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


@dataclass
class TrainResult:
    """Where training ended and what it wrote."""

    steps_done: int
    first_loss: float | None
    last_loss: float | None
    checkpoint: Path
    seconds: float


def _resume(out: Path, model: SAM2Base, optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimizer from ``out/last.pt``; returns the step to continue from."""
    path = out / LAST
    if not path.is_file():
        return 0
    data = read_checkpoint(path)
    model.load_state_dict(data["model"])
    if "optimizer" in data:
        optimizer.load_state_dict(data["optimizer"])
    step = int(data.get("step", 0))
    logger.info("resuming from %s at step %d", path, step)
    return step


def train(model: SAM2Base, cases: Sequence[LesionCase], out: Path, config: SAM2CTConfig,
          train_config: TrainConfig, resume: bool = True) -> TrainResult:
    """Fine-tune ``model`` on clips drawn from ``cases``; checkpoints go to ``out``.

    ``out/last.pt`` (every ``save_every`` steps and at the end) holds model + optimizer + step and
    is picked up again when ``resume``; ``out/sam2ct.pt`` is the final model in the published
    layout; ``out/train_log.jsonl`` has one line of loss parts per ``log_every`` steps.
    """
    if not cases:
        raise ValueError("Invalid 'cases' - no training cases")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, train_config)
    start = _resume(out, model, optimizer) if resume else 0
    rng = np.random.default_rng(train_config.seed + start)
    torch.manual_seed(train_config.seed + start)
    first = last = None
    began = time.perf_counter()
    step = start
    for step in range(start + 1, train_config.steps + 1):
        case = cases[int(rng.integers(len(cases)))]
        parts = train_step(model, optimizer, make_clip(case, config, rng, train_config.clip_length),
                           config, train_config)
        first = parts["total"] if first is None else first
        last = parts["total"]
        if step % train_config.log_every == 0 or step == train_config.steps:
            _log(out, step, parts, time.perf_counter() - began)
        if step % train_config.save_every == 0:
            _save_last(out, model, optimizer, config, step, train_config)
    _save_last(out, model, optimizer, config, step, train_config)
    final = save_checkpoint(out / FINAL, model, config, step=step)
    model.eval()
    return TrainResult(step - start, first, last, final, time.perf_counter() - began)


def _save_last(out: Path, model: SAM2Base, optimizer: torch.optim.Optimizer,
               config: SAM2CTConfig, step: int, train_config: TrainConfig) -> None:
    save_checkpoint(out / LAST, model, config, optimizer=optimizer.state_dict(), step=step,
                    train_config=json.loads(json.dumps(asdict(train_config))))


def _log(out: Path, step: int, parts: dict[str, float], seconds: float) -> None:
    logger.info("step %d  loss %.4f  (focal %.4f dice %.4f iou %.4f obj %.4f)  %.1fs", step,
                parts["total"], parts["focal"], parts["dice"], parts["iou"],
                parts["object_score"], seconds)
    with open(out / LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "seconds": round(seconds, 2), **parts}) + "\n")
