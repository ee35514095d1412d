"""One interface for every model: ``segment(volume, spacing, prompts) -> masks``.

A model that knows how sure it is of a mask may also offer ``segment_scored`` (the
:class:`ScoringSegmenter` capability); :func:`segment_with_scores` asks any segmenter for masks
and scores, with ``None`` for a model that gives none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sam2ct.prompts import Prompt

__all__ = ["ScoringSegmenter", "Segmenter", "segment_with_scores"]


@runtime_checkable
class Segmenter(Protocol):
    """A promptable 3D segmenter.

    ``volume`` is (slices, rows, columns) in HU; ``spacing`` (slice, row, column) in mm. Returns one
    boolean mask of the volume's shape per prompt, in order.
    """

    name: str
    version: str
    checkpoint_sha256: str | None

    def segment(
        self, volume: np.ndarray, spacing: tuple[float, float, float], prompts: Sequence[Prompt]
    ) -> list[np.ndarray]: ...


@runtime_checkable
class ScoringSegmenter(Segmenter, Protocol):
    """A segmenter that also gives its own confidence in each mask, in [0, 1].

    ``segment_scored`` returns, per prompt and in order, the mask ``segment`` returns and its
    score (``None`` where it has none); each model's docstring says what its score is.
    """

    def segment_scored(
        self, volume: np.ndarray, spacing: tuple[float, float, float], prompts: Sequence[Prompt]
    ) -> list[tuple[np.ndarray, float | None]]: ...


def segment_with_scores(segmenter: Segmenter, volume: np.ndarray,
                        spacing: tuple[float, float, float], prompts: Sequence[Prompt]
                        ) -> list[tuple[np.ndarray, float | None]]:
    """One (mask, model score) pair per prompt, in order; the score is ``None`` when
    ``segmenter`` gives none (it is not a :class:`ScoringSegmenter`).

    Parameters
    ----------
    segmenter
        Any segmenter; its ``segment_scored`` is used when it has one, else ``segment``.
    volume
        (slices, rows, columns) in HU.
    spacing
        (slice, row, column) in mm.
    prompts
        The prompts, each giving one mask.
    """
    if isinstance(segmenter, ScoringSegmenter):
        return list(segmenter.segment_scored(volume, spacing, prompts))
    return [(mask, None) for mask in segmenter.segment(volume, spacing, prompts)]
