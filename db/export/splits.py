"""Patient-level, deterministic train/validation/test splits and cross-validation folds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

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


def cross_validation_folds(case_patients: Mapping[str, str], seed: int,
                           folds: int = 5) -> list[dict[str, list[str]]]:
    """Cross-validation folds over cases, whole patients per fold (scikit-learn ``GroupKFold``).

    Returns nnU-Net's ``splits_final.json`` structure: ``[{"train": [...], "val": [...]}, ...]``.
    ``min(folds, patients)`` folds; none for a single patient. The same cases, patients and seed
    give the same folds.

    Examples
    --------
    >>> cross_validation_folds({"a": "p1", "b": "p1", "c": "p2"}, seed=0)[0]["val"] in (["a", "b"], ["c"])
    True
    """
    from sklearn.model_selection import GroupKFold  # import here: only nnU-Net exports need it

    cases = sorted(case_patients)
    groups = [case_patients[c] for c in cases]
    n = min(folds, len(set(groups)))
    if n < 2:
        return []
    splitter = GroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [{"train": sorted(cases[i] for i in train), "val": sorted(cases[i] for i in val)}
            for train, val in splitter.split(cases, groups=groups)]
