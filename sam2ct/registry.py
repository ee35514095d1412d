"""Choose a segmenter by name: ``classical``, ``auto`` or a SAM2CT checkpoint path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sam2ct.segmenter import Segmenter


@dataclass(frozen=True)
class Choice:
    """The segmenter picked for a ``--model`` value, and a warning to show when it fell back."""

    segmenter: Segmenter
    warning: str | None = None


def choose_segmenter(model: str = "auto", checkpoint: str | Path | None = None,
                     device: str | None = None) -> Choice:
    """Resolve ``model`` (``auto``, ``classical``, ``sam2ct`` or a ``.pt`` path) to a segmenter.

    ``auto`` uses SAM2CT when a checkpoint is configured, else the classical segmenter with a
    warning that callers must show (CLI output and the SEG's algorithm identification).
    """
    from sam2ct.classical import ClassicalSegmenter

    if model == "classical":
        return Choice(ClassicalSegmenter())
    if model not in ("auto", "sam2ct"):
        checkpoint = model
    if checkpoint is None:
        if model == "sam2ct":
            raise ValueError("Invalid 'model' value 'sam2ct' - no checkpoint configured (SAM2CT_MODEL)")
        return Choice(ClassicalSegmenter(),
                      "no SAM2CT checkpoint configured: using the classical fallback segmenter")
    from sam2ct.model import SAM2CTSegmenter

    return Choice(SAM2CTSegmenter.from_checkpoint(Path(checkpoint), device=device))
