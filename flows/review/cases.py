"""What the review page and the run report show of one segmentation, and how they group them.

A :class:`Case` is a catalog row (:class:`db.reviews.QueueItem`) as people read it: the prompt's
kind and how its GSPS encoded it (the viewer that saved it and the graphics it came from), the
measures, the quality flags, the latest score and which slices to look at. Patient identifiers
are only filled in when asked for. :func:`group_studies` puts cases under their study and lesion.

Example
-------
>>> studies = group_studies([case_of(item) for item in review_queue(engine)])  # doctest: +SKIP
>>> studies[0].lesions[0].cases[0].kind  # doctest: +SKIP
'line'
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np

from db.records import ReviewScore, SegStatus
from db.reviews import QueueItem
from dicom_io.checks import described
from dicom_io.printable import printable

log = logging.getLogger(__name__)

#: The four scores, their keys on the review page and their words.
SCORES: tuple[tuple[str, ReviewScore, str], ...] = (
    ("1", ReviewScore.ACCEPTABLE, "acceptable"),
    ("2", ReviewScore.MINOR_EDITS, "minor edits"),
    ("3", ReviewScore.MAJOR_EDITS, "major edits"),
    ("4", ReviewScore.UNUSABLE, "unusable"),
)
SCORE_WORDS = {score.value: words for _, score, words in SCORES}
#: Slices shown beyond the mask's first and last, and at most this many in all (evenly spaced).
SLICE_MARGIN = 2
MAX_SLICES = 64
#: Characters kept of a UID where one is shown (its end: the distinguishing part).
UID_TAIL = 12


@dataclass(frozen=True)
class Identifiers:
    """Who and what a case belongs to, shown only when the page is told to."""

    patient_id: str | None
    pseudonym: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Case:
    """One segmentation as people read it (see the module docstring)."""

    item: QueueItem
    encoding: str
    slices: tuple[int, ...]
    identifiers: Identifiers | None = None

    @property
    def id(self) -> int:
        """The segmentation's catalog id (all the page says of whose it is, by default)."""
        return self.item.segmentation_id

    @property
    def kind(self) -> str:
        """The prompt's kind: line, arrow, bidirectional, ..."""
        return self.item.kind

    @property
    def ok(self) -> bool:
        """A mask was made (there is a SEG to look at)."""
        return self.item.status is not SegStatus.FAILED and self.item.seg_path is not None

    @property
    def model(self) -> str:
        """Model name and version."""
        return " ".join(v for v in (self.item.model_name, self.item.model_version) if v)

    @property
    def flags(self) -> list[dict]:
        """Quality flags (``code``, ``reason``)."""
        return self.item.flags

    @property
    def checked(self) -> bool:
        """The quality checks ran on this segmentation (its flags are known)."""
        return self.item.quality_flags is not None

    @property
    def score_words(self) -> str | None:
        """The latest score in words, or None when not scored."""
        return SCORE_WORDS[self.item.score.value] if self.item.score else None

    @property
    def prompt_slice(self) -> int | None:
        """The slice the annotation was drawn on."""
        return self.item.slice_index

    @property
    def key_slices(self) -> list[tuple[str, int]]:
        """(name, slice) of the mask's first slice, the prompt slice and its last slice."""
        bbox, keys = self.item.bbox, []
        if bbox:
            keys.append(("first", int(bbox[0])))
        if self.prompt_slice is not None:
            keys.append(("prompt", self.prompt_slice))
        if bbox:
            keys.append(("last", int(bbox[3])))
        seen: set[int] = set()
        return [(name, k) for name, k in keys if not (k in seen or seen.add(k))]

    @property
    def box(self) -> tuple[int, ...] | None:
        """(slice0, row0, col0, slice1, row1, col1), inclusive: the mask's box, else the
        prompt's points; None when neither is known."""
        if self.item.bbox:
            return tuple(int(v) for v in self.item.bbox)
        points = np.asarray(self.item.points_voxel, dtype=float).reshape(-1, 3)
        if not points.size:
            return None
        lo, hi = np.floor(points.min(axis=0)), np.floor(points.max(axis=0))
        return int(lo[2]), int(lo[1]), int(lo[0]), int(hi[2]), int(hi[1]), int(hi[0])

    def prompt_points(self) -> np.ndarray:
        """The drawing's (column, row) points on its slice, (N, 2)."""
        points = np.asarray(self.item.points_voxel, dtype=float).reshape(-1, 3)
        return points[:, :2]


def case_of(item: QueueItem, identifiers: Identifiers | None = None) -> Case:
    """The case of one catalog row: its encoding read from its GSPS, its slices to show."""
    return Case(item, encoding_of(item.gsps_path, item.annotation_index, item.layer),
                slices_to_show(item), identifiers)


def slices_to_show(item: QueueItem) -> tuple[int, ...]:
    """The mask's slices with ``SLICE_MARGIN`` around them and the prompt slice, within the
    series; at most ``MAX_SLICES``, evenly spaced, the prompt slice always among them."""
    ends = [item.slice_index] if item.slice_index is not None else []
    if item.bbox:
        ends += [int(item.bbox[0]) - SLICE_MARGIN, int(item.bbox[3]) + SLICE_MARGIN]
    if not ends:
        return ()
    last = item.series_slices - 1 if item.series_slices else max(ends)
    lo, hi = max(0, min(ends)), min(last, max(ends))
    chosen = set(range(lo, hi + 1))
    if len(chosen) > MAX_SLICES:
        chosen = set(np.linspace(lo, hi, MAX_SLICES - 1).round().astype(int).tolist())
    if item.slice_index is not None:
        chosen.add(item.slice_index)
    return tuple(sorted(chosen))


@functools.lru_cache(maxsize=4096)
def encoding_of(gsps_path: str | None, index: int | None, layer: str | None = None) -> str:
    """How the GSPS encoded this annotation: the viewer that saved it and the graphic elements
    it was read from (e.g. ``AGFA IMPAX AGILITY: graphics 1+2 (shaft + head)``). Only the
    layer name when the GSPS file cannot be read any more."""
    fallback = f"layer {printable(layer, 64)}" if layer else "unknown"
    if not gsps_path or index is None or not Path(gsps_path).is_file():
        return fallback
    from dicom_io.gsps import annotations_of, read_presentation_state

    try:
        ds = read_presentation_state(Path(gsps_path))
        annotation = next((a for a in annotations_of(ds, gsps_path) if a.index == index), None)
    except Exception as exc:  # noqa: BLE001 - an unreadable GSPS only loses its description
        log.warning("GSPS file %s: %s", Path(gsps_path).name, described(exc))
        return fallback
    viewer = " ".join(str(ds.get(k, "") or "") for k in ("Manufacturer",
                                                          "ManufacturerModelName")).strip()
    parts = [annotation.origin if annotation else ""]
    if annotation is not None and annotation.units_converted_from_display:
        parts.append("DISPLAY units")
    if annotation is not None and annotation.layer:
        parts.append(f"layer {annotation.layer}")
    what = ", ".join(p for p in parts if p) or fallback
    return printable(f"{viewer}: {what}" if viewer else what, 160)


def uid_tail(uid: str) -> str:
    """The last ``UID_TAIL`` characters of a UID, marked as cut when it was longer."""
    return uid if len(uid) <= UID_TAIL else "…" + uid[-UID_TAIL:]


# --- grouping for the report ---------------------------------------------------------------

@dataclass
class Lesion:
    """Cases of one series whose masks (or, without a mask, prompts) overlap: one lesion."""

    number: int
    cases: list[Case]

    @property
    def slices(self) -> tuple[int, int] | None:
        """(first, last) slice the lesion's cases cover."""
        boxes = [c.box for c in self.cases if c.box]
        if not boxes:
            return None
        return min(b[0] for b in boxes), max(b[3] for b in boxes)

    @property
    def flagged(self) -> int:
        """Cases of this lesion with at least one quality flag."""
        return sum(1 for c in self.cases if c.flags)


@dataclass
class StudyGroup:
    """One study's lesions, in slice order."""

    number: int
    study_instance_uid: str
    study_date: date | None
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def cases(self) -> list[Case]:
        """Every case of the study."""
        return [c for lesion in self.lesions for c in lesion.cases]


def group_studies(cases: Iterable[Case]) -> list[StudyGroup]:
    """Cases grouped by study (by date, then UID) and lesion (see :func:`lesions_of`)."""
    by_study: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_study[case.item.study_instance_uid].append(case)
    order = sorted(by_study, key=lambda uid: (by_study[uid][0].item.study_date or date.max, uid))
    groups = []
    for number, uid in enumerate(order, start=1):
        study = StudyGroup(number, uid, by_study[uid][0].item.study_date)
        by_series: dict[str, list[Case]] = defaultdict(list)
        for case in by_study[uid]:
            by_series[case.item.series_instance_uid].append(case)
        lesions = [group for series in sorted(by_series) for group in lesions_of(by_series[series])]
        study.lesions = [Lesion(n, group) for n, group in enumerate(lesions, start=1)]
        groups.append(study)
    return groups


def lesions_of(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases of one series joined into lesions: two cases whose boxes (mask, else prompt)
    overlap are one lesion, and so on transitively; in slice order, each by kind and id."""
    parent = list(range(len(cases)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = [c.box for c in cases]
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            if _overlap(boxes[i], boxes[j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[Case]] = defaultdict(list)
    for i, case in enumerate(cases):
        groups[root(i)].append(case)
    ordered = [sorted(g, key=lambda c: (c.kind, c.id)) for g in groups.values()]
    return sorted(ordered, key=lambda g: min((c.box or (1 << 30,))[0] for c in g))


def _overlap(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """True when two inclusive (s0, r0, c0, s1, r1, c1) boxes share a voxel."""
    if a is None or b is None:
        return False
    return all(a[k] <= b[k + 3] and b[k] <= a[k + 3] for k in range(3))


def when(value: datetime | None) -> str:
    """A review time as people read it (UTC, to the minute)."""
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""
