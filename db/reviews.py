"""Reviewers' scores of segmentations, their history, and the review queue.

A score is the paper's four-point scale (:class:`db.records.ReviewScore`) with a free-text note,
the reviewer's name and the time. Re-scoring adds a row: the newest row of a segmentation is its
score, the older ones its history. The queue lists segmentations with what a reviewer (or a run
report) shows: measures, quality flags, the annotation that prompted it and its latest score.

Example
-------
>>> record_review(engine, 12, ReviewScore.MINOR_EDITS, "jdoe", "rim missed")  # doctest: +SKIP
ReviewEntry(segmentation_id=12, score=<ReviewScore.MINOR_EDITS: 'minor'>, ...)
>>> [i.segmentation_id for i in review_queue(engine, QueueFilter(flagged=True))]  # doctest: +SKIP
[7, 12]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from functools import cache

from sqlalchemy import Engine, Select, Subquery, func, insert, select

from db.engine import catalog_errors
from db.models import (
    Annotation,
    PatientPseudonym,
    PresentationState,
    Review,
    Segmentation,
    Series,
    Study,
)
from db.records import ReviewScore, SegStatus

#: Longest reviewer name (the column's width) and note kept.
MAX_REVIEWER = 64
MAX_NOTE = 4000


@dataclass(frozen=True)
class ReviewEntry:
    """One recorded score of one segmentation."""

    segmentation_id: int
    score: ReviewScore
    note: str | None
    reviewer: str
    reviewed_at: datetime


@dataclass(frozen=True)
class QueueFilter:
    """Which segmentations the queue lists; ``None`` / ``False`` means no constraint.

    ``flagged``: only those with at least one quality flag; ``unreviewed``: only those with no
    score yet; ``with_mask``: only those with a SEG (not the failed ones); ``ids`` and
    ``seg_paths``: only these segmentations / SEG files (a run's report).
    """

    kind: str | None = None
    model: str | None = None
    since: date | None = None
    until: date | None = None
    flagged: bool = False
    unreviewed: bool = False
    with_mask: bool = False
    ids: tuple[int, ...] | None = None
    seg_paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"Invalid date range {self.since}..{self.until} - since after until")


@dataclass(frozen=True)
class QueueItem:
    """One segmentation as a reviewer sees it: its facts, the prompt and its latest score."""

    segmentation_id: int
    kind: str
    status: SegStatus
    model_name: str
    model_version: str
    study_date: date | None
    volume_ml: float
    voxels: int
    long_axis_mm: float | None
    short_axis_mm: float | None
    mean_hu: float | None
    bbox: list | None
    quality_flags: list | None
    flag_count: int | None
    reason: str | None
    seg_path: str | None
    seg_sop_instance_uid: str | None
    segment_number: int | None
    preview_path: str | None
    series_path: str | None
    series_slices: int
    manufacturer: str | None
    series_instance_uid: str
    study_instance_uid: str
    patient_pseudonym: str
    gsps_sop_instance_uid: str | None
    gsps_path: str | None
    annotation_index: int | None
    slice_index: int | None
    points_voxel: list
    length_mm: float | None
    layer: str | None
    score: ReviewScore | None
    note: str | None
    reviewer: str | None
    reviewed_at: datetime | None

    @property
    def flags(self) -> list[dict]:
        """The quality flags (``code``, ``reason``); empty when none or not checked."""
        return list(self.quality_flags or [])


@cache
def latest_reviews() -> Subquery:
    """Each reviewed segmentation's newest review row, every column of ``review`` (its score);
    older rows are history. One object (cached), so a statement may name it more than once."""
    newest = (select(func.max(Review.id).label("review_id"))
              .group_by(Review.segmentation_id).subquery("newest_review"))
    return select(Review).join(newest, Review.id == newest.c.review_id).subquery("latest_review")


def _queue_select(f: QueueFilter) -> Select:
    latest = latest_reviews()
    columns = {
        "segmentation_id": Segmentation.id, "kind": Segmentation.kind,
        "status": Segmentation.status, "model_name": Segmentation.model_name,
        "model_version": Segmentation.model_version, "study_date": Segmentation.study_date,
        "volume_ml": Segmentation.volume_ml, "voxels": Segmentation.voxels,
        "long_axis_mm": Segmentation.long_axis_mm, "short_axis_mm": Segmentation.short_axis_mm,
        "mean_hu": Segmentation.mean_hu, "bbox": Segmentation.bbox,
        "quality_flags": Segmentation.quality_flags, "flag_count": Segmentation.flag_count,
        "reason": Segmentation.reason, "seg_path": Segmentation.seg_path,
        "seg_sop_instance_uid": Segmentation.seg_sop_instance_uid,
        "segment_number": Segmentation.segment_number,
        "preview_path": Segmentation.preview_path, "series_path": Series.storage_path,
        "series_slices": Series.slices, "manufacturer": Series.manufacturer,
        "series_instance_uid": Series.series_instance_uid,
        "study_instance_uid": Study.study_instance_uid,
        "patient_pseudonym": Study.patient_pseudonym,
        "gsps_sop_instance_uid": PresentationState.sop_instance_uid,
        "gsps_path": PresentationState.path, "annotation_index": Annotation.gsps_index,
        "slice_index": Annotation.slice_index, "points_voxel": Annotation.points_voxel,
        "length_mm": Annotation.length_mm, "layer": Annotation.layer,
        "score": latest.c.score, "note": latest.c.note, "reviewer": latest.c.reviewer,
        "reviewed_at": latest.c.reviewed_at,
    }
    stmt = (select(*(column.label(name) for name, column in columns.items()))
            .join(Series, Segmentation.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Annotation, Segmentation.annotation_id == Annotation.id)
            .join(PresentationState, Annotation.presentation_state_id == PresentationState.id)
            .outerjoin(latest, latest.c.segmentation_id == Segmentation.id))
    conditions = [
        (f.kind, lambda v: Segmentation.kind == v),
        (f.model, lambda v: Segmentation.model_name == v),
        (f.since, lambda v: Segmentation.study_date >= v),
        (f.until, lambda v: Segmentation.study_date <= v),
        (f.flagged or None, lambda _: Segmentation.flag_count > 0),
        (f.unreviewed or None, lambda _: latest.c.id.is_(None)),
        (f.with_mask or None, lambda _: Segmentation.seg_path.is_not(None)),
        (f.ids, lambda v: Segmentation.id.in_(v)),
        (f.seg_paths, lambda v: Segmentation.seg_path.in_(v)),
    ]
    stmt = stmt.where(*(make(value) for value, make in conditions if value is not None))
    # flagged first (most flags first), then by study date and id
    return stmt.order_by(func.coalesce(Segmentation.flag_count, 0).desc(),
                         Segmentation.study_date.asc().nulls_last(), Segmentation.id)


def review_queue(engine: Engine, f: QueueFilter = QueueFilter(),
                 limit: int | None = None) -> list[QueueItem]:
    """Segmentations matching ``f``, flagged first, then by study date and id.

    Raises
    ------
    CatalogError
        The catalog cannot be read.
    """
    stmt = _queue_select(f)
    if limit is not None:
        stmt = stmt.limit(limit)
    with catalog_errors(engine, "cannot be read"), engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [_item(row) for row in rows]


def queue_item(engine: Engine, segmentation_id: int) -> QueueItem | None:
    """One segmentation as the queue shows it, or None when there is none of that id."""
    items = review_queue(engine, QueueFilter(ids=(segmentation_id,)))
    return items[0] if items else None


def _item(row) -> QueueItem:
    values = {f.name: row[f.name] for f in fields(QueueItem)}
    values["status"] = SegStatus(values["status"])
    if values["score"] is not None:
        values["score"] = ReviewScore(values["score"])
    values["reviewed_at"] = _utc(values["reviewed_at"])
    values["points_voxel"] = values["points_voxel"] or []
    return QueueItem(**values)


def record_review(engine: Engine, segmentation_id: int, score: ReviewScore | str,
                  reviewer: str, note: str | None = None,
                  reviewed_at: datetime | None = None) -> ReviewEntry:
    """Record one reviewer's score (and note) of one segmentation; earlier scores stay as its
    history.

    Raises
    ------
    ValueError
        An unknown score, an empty or too long reviewer name, a note over ``MAX_NOTE``
        characters, or no segmentation ``segmentation_id``.
    CatalogError
        The catalog cannot be written.
    """
    entry = _entry(segmentation_id, score, reviewer, note, reviewed_at)
    with catalog_errors(engine, "cannot record the review"), engine.begin() as conn:
        found = conn.execute(select(Segmentation.id).where(
            Segmentation.id == entry.segmentation_id)).scalar_one_or_none()
        if found is None:
            raise ValueError(f"Invalid 'segmentation_id' value {segmentation_id} - no such "
                             "segmentation in the catalog")
        conn.execute(insert(Review).values(
            segmentation_id=entry.segmentation_id, score=entry.score, note=entry.note,
            reviewer=entry.reviewer, reviewed_at=entry.reviewed_at))
    return entry


def _entry(segmentation_id: int, score: ReviewScore | str, reviewer: str, note: str | None,
           reviewed_at: datetime | None) -> ReviewEntry:
    """The review checked: each bad value raises a ValueError naming it."""
    try:
        score = ReviewScore(score)
    except ValueError as e:
        choices = ", ".join(s.value for s in ReviewScore)
        raise ValueError(f"Invalid 'score' value {score!r} - expected one of {choices}") from e
    reviewer = (reviewer or "").strip()
    if not reviewer or len(reviewer) > MAX_REVIEWER or not reviewer.isprintable():
        raise ValueError(f"Invalid 'reviewer' value {reviewer[:MAX_REVIEWER]!r} - a printable "
                         f"name of 1 to {MAX_REVIEWER} characters")
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE:
        raise ValueError(f"Invalid 'note' - {len(note)} characters, at most {MAX_NOTE}")
    when = _utc(reviewed_at) or datetime.now(UTC)
    return ReviewEntry(int(segmentation_id), score, note, reviewer, when)


def review_history(engine: Engine, segmentation_id: int) -> list[ReviewEntry]:
    """Every score of one segmentation, newest first (the first is its score)."""
    stmt = (select(Review.segmentation_id, Review.score, Review.note, Review.reviewer,
                   Review.reviewed_at)
            .where(Review.segmentation_id == segmentation_id).order_by(Review.id.desc()))
    with catalog_errors(engine, "cannot be read"), engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [ReviewEntry(sid, ReviewScore(score), note, reviewer, _utc(at))
            for sid, score, note, reviewer, at in rows]


def queue_choices(engine: Engine) -> dict[str, list[str]]:
    """The kinds and model names the catalog's segmentations have (the queue's filter menus)."""
    with catalog_errors(engine, "cannot be read"), engine.connect() as conn:
        return {name: list(conn.execute(select(column).distinct().order_by(column)).scalars())
                for name, column in (("kinds", Segmentation.kind),
                                     ("models", Segmentation.model_name))}


def patient_ids(engine: Engine, pseudonyms: Iterable[str]) -> dict[str, str]:
    """Pseudonym -> patient ID for these pseudonyms (only for a page told to show identifiers)."""
    wanted = sorted(set(pseudonyms))
    if not wanted:
        return {}
    stmt = select(PatientPseudonym.pseudonym, PatientPseudonym.patient_id).where(
        PatientPseudonym.pseudonym.in_(wanted))
    with catalog_errors(engine, "cannot be read"), engine.connect() as conn:
        return dict(conn.execute(stmt).all())


def _utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives it back without its zone)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
