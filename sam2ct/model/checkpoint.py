"""SAM2CT checkpoints: the published layout (``{"model": state_dict}``), loading and reporting."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sam2.modeling.sam2_base import SAM2Base

from sam2ct.files import replaced_on_success
from sam2ct.model.build import build_sam2ct
from sam2ct.model.config import NUM_POINT_LABELS, SAM2_POINT_LABELS, SAM2CTConfig

logger = logging.getLogger(__name__)

CONFIG_KEY = "sam2ct_config"  # our extra entry beside "model"; absent in published files
NEW_POINT_EMBEDDINGS = tuple(f"sam_prompt_encoder.point_embeddings.{i}.weight"
                             for i in range(SAM2_POINT_LABELS, NUM_POINT_LABELS))


class CheckpointError(ValueError):
    """A file that is not a loadable SAM2CT (or SAM2.1 Hiera-T) checkpoint."""


@dataclass(frozen=True)
class CheckpointReport:
    """What a checkpoint holds compared with the SAM2CT network.

    ``loadable`` is true when nothing is unexpected, no shape differs and the only missing keys
    are SAM2CT's new point embeddings (a plain SAM2.1 checkpoint: they stay untrained).
    """

    path: str
    sha256: str
    parameters: int
    point_embeddings: int
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    shape_mismatches: tuple[str, ...] = field(default=())
    extra_entries: tuple[str, ...] = field(default=())
    #: the SAM2CTConfig the network was built with (saved in the file, else the defaults)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def loadable(self) -> bool:
        """Whether ``load_sam2ct`` accepts this checkpoint."""
        return (not self.unexpected_keys and not self.shape_mismatches
                and set(self.missing_keys) <= set(NEW_POINT_EMBEDDINGS))

    @property
    def kind(self) -> str:
        """``sam2ct`` (all 8 embeddings), ``sam2.1`` (the 4 new ones missing) or ``other``."""
        if not self.loadable:
            return "other"
        return "sam2ct" if not self.missing_keys else "sam2.1"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind,
                "loadable": self.loadable, "parameters": self.parameters,
                "point_embeddings": self.point_embeddings,
                "missing_keys": list(self.missing_keys),
                "unexpected_keys": list(self.unexpected_keys),
                "shape_mismatches": list(self.shape_mismatches),
                "extra_entries": list(self.extra_entries), "config": self.config,
                "conventions": SAM2CTConfig.from_dict(self.config).conventions_name()}


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict (tensors on the CPU); raises CheckpointError for another layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load on any file raises anything:
        # KeyError (a text file taken for a legacy pickle), UnpicklingError, RuntimeError (a
        # zip that is not torch's), UnicodeDecodeError, EOFError...
        raise CheckpointError(f"{path}: not a readable torch checkpoint (a file saved by "
                              "torch.save, e.g. the published SAM2CT .pt; torch.load raised "
                              f"{type(exc).__name__})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: not the published layout - expected a dict whose "
                              "'model' entry is a state dict")
    return data


def saved_config(data: dict[str, Any]) -> SAM2CTConfig:
    """The settings a checkpoint runs with: those saved in it (conventions it predates take
    their legacy values), or the published conventions for a file without any (the authors')."""
    saved = data.get(CONFIG_KEY)
    return SAM2CTConfig.from_dict(saved) if saved else SAM2CTConfig()


def compare_state_dict(model: SAM2Base, state: dict[str, torch.Tensor]
                       ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape-mismatched) keys of ``state`` against ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    return missing, unexpected, mismatched


def inspect_checkpoint(path: Path, config: SAM2CTConfig | None = None
                       ) -> tuple[CheckpointReport, SAM2Base, dict[str, Any]]:
    """Compare the file with a freshly built SAM2CT network; never raises on key differences."""
    path = Path(path)
    data = read_checkpoint(path)
    config = config or saved_config(data)
    model = build_sam2ct(config)
    missing, unexpected, mismatched = compare_state_dict(model, data["model"])
    report = CheckpointReport(
        path=str(path), sha256=sha256_of(path),
        parameters=sum(t.numel() for t in data["model"].values() if t.is_floating_point()),
        point_embeddings=sum(1 for k in data["model"]
                             if k.startswith("sam_prompt_encoder.point_embeddings.")),
        missing_keys=tuple(missing), unexpected_keys=tuple(unexpected),
        shape_mismatches=tuple(mismatched),
        extra_entries=tuple(sorted(k for k in data if k != "model")), config=config.to_dict())
    return report, model, data


def load_sam2ct(path: Path, device: str | torch.device = "cpu",
                config: SAM2CTConfig | None = None) -> tuple[SAM2Base, CheckpointReport]:
    """Load a SAM2CT (or plain SAM2.1 Hiera-T) checkpoint onto ``device``, in eval mode.

    Missing and unexpected keys are reported (logged and returned); a file that is neither layout
    raises CheckpointError naming the offending keys.

    Example
    -------
    >>> model, report = load_sam2ct(Path("sam2ct.pt"), "cuda")  # doctest: +SKIP
    >>> report.missing_keys  # doctest: +SKIP
    ()
    """
    report, model, data = inspect_checkpoint(Path(path), config)
    if not report.loadable:
        bad = (list(report.unexpected_keys) + list(report.shape_mismatches)
               + [k for k in report.missing_keys if k not in NEW_POINT_EMBEDDINGS])
        raise CheckpointError(f"{path}: not a SAM2CT or SAM2.1 Hiera-T checkpoint - "
                              f"{len(bad)} keys differ, e.g. {bad[:3]}")
    model.load_state_dict(data["model"], strict=False)
    if report.missing_keys:
        logger.warning("%s: %d keys missing (untrained): %s", path, len(report.missing_keys),
                       ", ".join(report.missing_keys))
    return model.to(device).eval(), report


def save_checkpoint(path: Path, model: SAM2Base, config: SAM2CTConfig | None = None,
                    **extra: Any) -> Path:
    """Save ``{"model": state_dict, ...}`` (the published layout) via a temp name + rename.

    ``config`` is stored under ``sam2ct_config``; ``extra`` entries (optimizer, step) beside it.
    """
    path = Path(path)
    data: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if config is not None:
        data[CONFIG_KEY] = config.to_dict()
    data.update(extra)
    with replaced_on_success(path) as tmp:
        torch.save(data, tmp)
    return path
