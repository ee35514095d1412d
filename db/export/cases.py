"""Export cases: the catalog's segmentations grouped per CT series, with stable case ids."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from db.queries import SegmentationRow
from db.records import SegStatus


@dataclass(frozen=True)
class SegmentRef:
    """One segment of a SEG file."""

    seg_path: str
    segment_number: int
    segmentation_id: int


@dataclass(frozen=True)
class Case:
    """One CT series and the segments that become its label (label 1 = lesion)."""

    case_id: str
    patient_pseudonym: str
    study_instance_uid: str
    series_instance_uid: str
    series_path: str
    segments: tuple[SegmentRef, ...]


def case_id(series_instance_uid: str, key: bytes) -> str:
    """A stable id for a series that does not reveal its UID (keyed hash).

    With the catalog's export key (``db.keys``) every export of a catalog names a series alike;
    the prefix keeps these hashes apart from the UID remapping made with the same key.
    """
    digest = hmac.new(key, b"case-id:" + series_instance_uid.encode(), hashlib.sha256).hexdigest()
    return f"case_{digest[:12]}"


def cases_from_rows(rows: Iterable[SegmentationRow], key: bytes) -> list[Case]:
    """Group usable segmentations (ok / needs-review, with a SEG file) into cases by series."""
    grouped: dict[str, list[SegmentationRow]] = {}
    for row in rows:
        usable = row.status != SegStatus.FAILED.value and row.seg_path and row.segment_number
        if usable and row.series_path:
            grouped.setdefault(row.series_instance_uid, []).append(row)
    cases = []
    for series_uid, members in grouped.items():
        first = members[0]
        refs = tuple(sorted({SegmentRef(r.seg_path, int(r.segment_number), r.segmentation_id)
                             for r in members}, key=lambda s: s.segmentation_id))
        cases.append(Case(case_id(series_uid, key), first.patient_pseudonym,
                          first.study_instance_uid, series_uid, first.series_path, refs))
    return sorted(cases, key=lambda c: c.case_id)
