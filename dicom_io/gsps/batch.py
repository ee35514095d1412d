"""Many presentation states at once: several PRs per image (one per reading session)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from dicom_io.gsps.annotation import Annotation

# Two drawings whose points all lie this close (PIXEL units) are the same drawing.
DUPLICATE_TOLERANCE_PX = 0.5


def mark_duplicates(annotations: Iterable[Annotation]) -> list[Annotation]:
    """The annotations, with each repeat of an earlier usable one skipped as a duplicate.

    Viewers often save a new PR per reading session that repeats earlier drawings on the same
    image; the first occurrence (in the order given) is kept.

    Example
    -------
    >>> [a.skip_reason for a in mark_duplicates([a1, a1_again])]  # doctest: +SKIP
    [None, 'duplicate of 1.2.3#0 (same line on the same image)']
    """
    kept: list[Annotation] = []
    out = []
    for a in annotations:
        original = next((k for k in kept if _same_drawing(k, a)), None) if a.usable else None
        if original is None:
            if a.usable:
                kept.append(a)
            out.append(a)
            continue
        out.append(dataclasses.replace(a, skip_reason=(
            f"duplicate of {original.identifier} (same {a.kind.value} on the same image)")))
    return out


def _same_drawing(a: Annotation, b: Annotation) -> bool:
    """Same image, frame, kind and points (within the tolerance)."""
    if (a.referenced_sop_instance_uid, a.referenced_frame, a.kind) != (
        b.referenced_sop_instance_uid, b.referenced_frame, b.kind
    ) or len(a.points) != len(b.points):
        return False
    return bool(np.all(np.abs(np.subtract(a.points, b.points)) <= DUPLICATE_TOLERANCE_PX))
