"""Patient-level, deterministic train/validation/test splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLIT_NAMES = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); 1 to 3 non-negative parts summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError as e:
        raise ValueError(f"Invalid split '{text}' - expected fractions like 0.7,0.15,0.15") from e
    if not 1 <= len(parts) <= len(SPLIT_NAMES) or any(p < 0 for p in parts):
        raise ValueError(f"Invalid split '{text}' - one to three non-negative fractions")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ValueError(f"Invalid split '{text}' - fractions sum to {sum(parts):g}, not 1")
    return parts


def assign_splits(patients: Iterable[str], fractions: Sequence[float],
                  seed: int) -> dict[str, str]:
    """Patient -> split name. Patients are ordered by a seeded hash and cut by the fractions.

    The same patients, fractions and seed always give the same assignment; all of one
    patient's cases share a split, so no patient leaks between train and test.
    """
    unique = sorted(set(patients),
                    key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    out: dict[str, str] = {}
    n, start, cumulative = len(unique), 0, 0.0
    for name, fraction in zip(SPLIT_NAMES, fractions, strict=False):
        cumulative += fraction
        end = n if name == SPLIT_NAMES[len(fractions) - 1] else round(cumulative * n)
        out.update({p: name for p in unique[start:end]})
        start = end
    return out
