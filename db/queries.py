"""Researchers' queries: filters -> rows or a pandas DataFrame, and statistics.

A segmentation's review score is its newest review row (re-scoring adds a row, see
:func:`db.reviews.latest_reviews`); its quality flags are the automatic checks made when its
mask was made (``sam2ct.quality``; NULL: made before the checks existed).

Example
-------
>>> f = CatalogFilter(kind="line", min_volume_ml=1.0, since=date(2025, 1, 1), model="sam2ct")
>>> frame = query_frame(engine, f)  # doctest: +SKIP
>>> reviewed = CatalogFilter(review=("acceptable", "minor"), flagged=False)
>>> acceptability(engine, reviewed)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache

import pandas as pd
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    case,
    func,
    or_,
    select,
    type_coerce,
)

from db.models import (
    Annotation,
    Failure,
    HarvestRun,
    PresentationState,
    Segmentation,
    SegmentationSummary,
    Series,
    Study,
)
from db.records import ReviewScore, RunStatus, SegStatus, Stage
from db.reviews import latest_reviews
from db.summary import month_key

#: ``CatalogFilter.review`` value selecting segmentations nobody has scored yet
UNREVIEWED = "none"


@dataclass(frozen=True)
class CatalogFilter:
    """Which segmentations a query selects; ``None`` means no constraint. Dates are inclusive.

    ``review``: latest review scores to keep (``ReviewScore`` values, and ``"none"`` for the
    never reviewed), e.g. ``("acceptable", "minor")``. ``flagged``: True keeps segmentations with
    at least one quality flag, False those checked with none (never-checked rows are neither).
    """

    kind: str | None = None
    min_volume_ml: float | None = None
    max_volume_ml: float | None = None
    since: date | None = None
    until: date | None = None
    model: str | None = None
    status: SegStatus | None = None
    body_part: str | None = None
    study_instance_uid: str | None = None
    review: tuple[str, ...] | None = None
    flagged: bool | None = None

    def __post_init__(self) -> None:
        lo, hi = self.min_volume_ml, self.max_volume_ml
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"Invalid volume range {lo}..{hi} mL - minimum above maximum")
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"Invalid date range {self.since}..{self.until} - since after until")
        if self.status is not None:
            object.__setattr__(self, "status", SegStatus(self.status))
        if self.review is not None:
            object.__setattr__(self, "review", review_scores(self.review))


def review_scores(values: Iterable[str] | str) -> tuple[str, ...]:
    """Review filter values checked and in a fixed order: ``ReviewScore`` values and ``"none"``
    (never reviewed); a comma-separated text is split. ValueError names an unknown value."""
    if isinstance(values, str):
        values = values.split(",")
    allowed = [s.value for s in ReviewScore] + [UNREVIEWED]
    chosen = {str(getattr(v, "value", v)).strip().lower() for v in values} - {""}
    unknown = sorted(chosen - set(allowed))
    if unknown or not chosen:
        raise ValueError(f"Invalid review filter {', '.join(unknown) or 'value (empty)'} - "
                         f"expected a comma list of {', '.join(allowed)}")
    return tuple(v for v in allowed if v in chosen)


@dataclass(frozen=True)
class SegmentationRow:
    """One catalogued segmentation with what a researcher needs to find and export it."""

    segmentation_id: int
    kind: str
    status: str
    model_name: str
    model_version: str
    volume_ml: float
    voxels: int
    long_axis_mm: float | None
    short_axis_mm: float | None
    mean_hu: float | None
    seg_sop_instance_uid: str | None
    segment_number: int | None
    seg_path: str | None
    preview_path: str | None
    patient_pseudonym: str
    study_instance_uid: str
    study_date: date | None
    series_instance_uid: str
    body_part: str | None
    series_path: str | None
    gsps_sop_instance_uid: str
    annotation_index: int
    created_at: datetime | None
    flag_count: int | None  # None: not checked (made before the checks existed, or failed)
    quality_flags: list[dict] | None  # [{"code": ..., "reason": ...}]
    review_score: str | None  # the latest review's score; None: not reviewed


_COLUMNS = (
    Segmentation.id.label("segmentation_id"), Segmentation.kind,
    type_coerce(Segmentation.status, String).label("status"), Segmentation.model_name, Segmentation.model_version,
    Segmentation.volume_ml, Segmentation.voxels, Segmentation.long_axis_mm,
    Segmentation.short_axis_mm, Segmentation.mean_hu, Segmentation.seg_sop_instance_uid,
    Segmentation.segment_number, Segmentation.seg_path, Segmentation.preview_path,
    Study.patient_pseudonym, Study.study_instance_uid, Study.study_date,
    Series.series_instance_uid, Series.body_part, Series.storage_path.label("series_path"),
    Segmentation.gsps_sop_instance_uid, Segmentation.annotation_index, Segmentation.created_at,
    Segmentation.flag_count, Segmentation.quality_flags,
    type_coerce(latest_reviews().c.score, String).label("review_score"),
)


def _review_condition(scores: tuple[str, ...]):
    """The latest score is one of ``scores`` (``"none"``: no review yet)."""
    score = latest_reviews().c.score
    named = [s for s in scores if s != UNREVIEWED]
    conditions = [score.in_(named)] if named else []
    if UNREVIEWED in scores:
        conditions.append(score.is_(None))
    return or_(*conditions)


def _where(stmt: Select, f: CatalogFilter) -> Select:
    """Apply the filter's constraints (the joined tables must already be in ``stmt``)."""
    conditions = [
        (f.kind, lambda v: Segmentation.kind == v),
        (f.min_volume_ml, lambda v: Segmentation.volume_ml >= v),
        (f.max_volume_ml, lambda v: Segmentation.volume_ml <= v),
        (f.since, lambda v: Segmentation.study_date >= v),
        (f.until, lambda v: Segmentation.study_date <= v),
        (f.model, lambda v: Segmentation.model_name == v),
        (f.status, lambda v: Segmentation.status == v),
        (f.body_part, lambda v: func.upper(Series.body_part) == v.upper()),
        (f.study_instance_uid, lambda v: Study.study_instance_uid == v),
        (f.review, _review_condition),
        (f.flagged, lambda v: Segmentation.flag_count > 0 if v else Segmentation.flag_count == 0),
    ]
    return stmt.where(*(make(value) for value, make in conditions if value is not None))


@cache
def _joined() -> Select:
    """The filter-less, ordered SELECT of every segmentation row (built once: it is immutable)."""
    return (select(*_COLUMNS)
            .join(Series, Segmentation.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .outerjoin(latest_reviews(), latest_reviews().c.segmentation_id == Segmentation.id)
            .order_by(Segmentation.study_date, Segmentation.id))


def select_segmentations(f: CatalogFilter = CatalogFilter(), limit: int | None = None) -> Select:
    """The SELECT of segmentation rows matching ``f``, ordered by study date, then id."""
    stmt = _where(_joined(), f)
    return stmt.limit(limit) if limit is not None else stmt


def _reading(engine: Engine) -> Connection:
    """A connection for one read: autocommit, so no BEGIN / ROLLBACK round trips."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def query_rows(engine: Engine, f: CatalogFilter = CatalogFilter(),
               limit: int | None = None) -> list[SegmentationRow]:
    """Segmentations matching ``f`` as :class:`SegmentationRow` objects."""
    with _reading(engine) as conn:  # .all(): one fetchall, not a fetchone per row
        rows = conn.execute(select_segmentations(f, limit)).all()
    return [SegmentationRow(*row) for row in rows]


def query_frame(engine: Engine, f: CatalogFilter = CatalogFilter(),
                limit: int | None = None) -> pd.DataFrame:
    """Segmentations matching ``f`` as a DataFrame (one row each, SegmentationRow's columns)."""
    names = [field.name for field in fields(SegmentationRow)]
    with _reading(engine) as conn:  # plain tuples straight into the frame: no row objects
        rows = conn.execute(select_segmentations(f, limit)).all()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=names)
    frame["flag_count"] = frame["flag_count"].astype("Int64")  # NULL (not checked) stays NA
    return frame


def summary_answers(f: CatalogFilter) -> bool:
    """True when the summary table answers :func:`stats` under ``f`` exactly: no volume, body
    part, study, review or flag constraint, and dates (if any) on whole study months."""
    if any(v is not None for v in (f.min_volume_ml, f.max_volume_ml, f.body_part,
                                   f.study_instance_uid, f.review, f.flagged)):
        return False
    starts_month = f.since is None or f.since.day == 1
    ends_month = f.until is None or f.until == date.max or (f.until + timedelta(days=1)).day == 1
    return starts_month and ends_month


def stats(engine: Engine, f: CatalogFilter = CatalogFilter()) -> pd.DataFrame:
    """Count, total and mean volume per (kind, model, status) under ``f``.

    Read from the trigger-kept ``segmentation_summary`` (a few thousand rows) when it answers
    ``f`` exactly (see :func:`summary_answers`), else grouped over ``segmentation`` itself.
    """
    stmt = _summary_stats(f) if summary_answers(f) else _segmentation_stats(f)
    with _reading(engine) as conn:
        rows = [(k, m, SegStatus(s).value, int(n), float(t or 0), float(t or 0) / n)
                for k, m, s, n, t in conn.execute(stmt)]
    return pd.DataFrame(rows, columns=["kind", "model_name", "status", "segmentations",
                                       "total_volume_ml", "mean_volume_ml"])


def _summary_stats(f: CatalogFilter) -> Select:
    """Stats from the summary: sum its (kind, model, version, status, month) groups."""
    s = SegmentationSummary
    n = func.sum(s.n)
    stmt = (select(s.kind, s.model_name, s.status, n, func.sum(s.volume_sum))
            .group_by(s.kind, s.model_name, s.status).having(n > 0)
            .order_by(s.kind, s.model_name, s.status))
    conditions = [
        (f.kind, lambda v: s.kind == v),
        (f.model, lambda v: s.model_name == v),
        (f.status, lambda v: s.status == v),
        (f.since, lambda v: s.study_month >= month_key(v)),
        (f.until, lambda v: s.study_month.between(1, month_key(v))),
    ]
    return stmt.where(*(make(value) for value, make in conditions if value is not None))


def _segmentation_stats(f: CatalogFilter) -> Select:
    """Stats grouped over the segmentation rows (filters the summary cannot answer)."""
    stmt = (select(Segmentation.kind, Segmentation.model_name, Segmentation.status,
                   func.count(), func.sum(Segmentation.volume_ml))
            .group_by(Segmentation.kind, Segmentation.model_name, Segmentation.status)
            .order_by(Segmentation.kind, Segmentation.model_name, Segmentation.status))
    return _where(_joined_for(stmt, f), f)


def _joined_for(stmt: Select, f: CatalogFilter) -> Select:
    """``stmt`` over ``segmentation`` joined to the tables that ``f``'s constraints need."""
    if f.body_part is not None or f.study_instance_uid is not None:
        stmt = (stmt.join(Series, Segmentation.series_id == Series.id)
                .join(Study, Series.study_id == Study.id))
    if f.review is not None:
        stmt = stmt.outerjoin(latest_reviews(),
                              latest_reviews().c.segmentation_id == Segmentation.id)
    return stmt


#: columns of :func:`acceptability`
ACCEPTABILITY_COLUMNS = ("model_name", "model_version", "segmentations", "checked", "flagged",
                         "reviewed", *(s.value for s in ReviewScore), "acceptability")


def acceptability(engine: Engine, f: CatalogFilter = CatalogFilter()) -> pd.DataFrame:
    """Per model and version under ``f``: segmentations, how many had their quality checked
    and were flagged, how many are reviewed, each latest score's count, and the acceptability
    rate (acceptable + minor edits) / reviewed, as the paper reports it (NaN: none reviewed).
    """
    score = latest_reviews().c.score
    counts = [func.count(), func.count(Segmentation.flag_count),
              func.count(case((Segmentation.flag_count > 0, 1))), func.count(score),
              *(func.count(case((score == s.value, 1))) for s in ReviewScore)]
    stmt = (select(Segmentation.model_name, Segmentation.model_version, *counts)
            .outerjoin(latest_reviews(), latest_reviews().c.segmentation_id == Segmentation.id)
            .group_by(Segmentation.model_name, Segmentation.model_version)
            .order_by(Segmentation.model_name, Segmentation.model_version))
    stmt = _where(_joined_for(stmt, replace(f, review=None)), f)
    with _reading(engine) as conn:
        rows = [tuple(row) for row in conn.execute(stmt)]
    frame = pd.DataFrame(rows, columns=list(ACCEPTABILITY_COLUMNS[:-1]))
    good = frame[ReviewScore.ACCEPTABLE.value] + frame[ReviewScore.MINOR_EDITS.value]
    frame["acceptability"] = (good / frame["reviewed"].where(frame["reviewed"] > 0)).round(4)
    return frame


def table_counts(engine: Engine) -> dict[str, int]:
    """Rows per catalog table (studies, series, GSPS, annotations, segmentations, ...)."""
    tables = {"studies": Study, "series": Series, "presentation_states": PresentationState,
              "annotations": Annotation, "segmentations": Segmentation, "failures": Failure,
              "harvest_runs": HarvestRun}
    with _reading(engine) as conn:
        return {name: conn.execute(select(func.count()).select_from(model)).scalar_one()
                for name, model in tables.items()}


def failures_by_stage(engine: Engine, open_only: bool = True) -> dict[str, int]:
    """Number of (open) failures per pipeline stage."""
    stmt = select(Failure.stage, func.count()).group_by(Failure.stage)
    if open_only:
        stmt = stmt.where(Failure.resolved_at.is_(None))
    with _reading(engine) as conn:
        return {str(getattr(stage, "value", stage)): n for stage, n in conn.execute(stmt)}


def recorded_presentation_states(engine: Engine, sop_instance_uids: Iterable[str]) -> set[str]:
    """Which of these GSPS the catalog already holds (the flows skip them)."""
    uids = list(set(sop_instance_uids))
    found: set[str] = set()
    with _reading(engine) as conn:
        for start in range(0, len(uids), 500):
            chunk = uids[start:start + 500]
            found.update(conn.execute(select(PresentationState.sop_instance_uid).where(
                PresentationState.sop_instance_uid.in_(chunk))).scalars())
    return found


def open_failures(engine: Engine, stage: str | None = None) -> pd.DataFrame:
    """Unresolved failures (stage, object UID, error class, message, attempts), oldest first."""
    stmt = (select(Failure.stage, Failure.object_uid, Failure.error_class, Failure.message,
                   Failure.attempts, Failure.last_seen)
            .where(Failure.resolved_at.is_(None)).order_by(Failure.first_seen, Failure.id))
    if stage is not None:
        stmt = stmt.where(Failure.stage == stage)
    with _reading(engine) as conn:
        rows = [(str(getattr(r[0], "value", r[0])), *r[1:]) for r in conn.execute(stmt)]
    return pd.DataFrame(rows, columns=["stage", "object_uid", "error_class", "message",
                                       "attempts", "last_seen"])


@dataclass
class SeriesState:
    """What the catalog holds for one series: its segmentations' statuses and files, and the
    open failure that stopped it, if any."""

    ok: int = 0
    failed: int = 0
    seg_paths: list[str] = field(default_factory=list)
    preview_paths: list[str] = field(default_factory=list)
    failed_stage: str | None = None
    message: str | None = None


def series_state(engine: Engine, series_instance_uid: str) -> SeriesState:
    """The catalog's word on one series (the source of truth when it was segmented elsewhere)."""
    rows_stmt = (select(Segmentation.status, Segmentation.seg_path, Segmentation.preview_path)
                 .join(Series, Segmentation.series_id == Series.id)
                 .where(Series.series_instance_uid == series_instance_uid))
    failure_stmt = (select(Failure.stage, Failure.message)
                    .where(Failure.object_uid == series_instance_uid,
                           Failure.resolved_at.is_(None)))
    with _reading(engine) as conn:
        rows = conn.execute(rows_stmt).all()
        failure = conn.execute(failure_stmt).first()
    state = SeriesState()
    if failure is not None:
        state.failed_stage, state.message = str(getattr(failure[0], "value", failure[0])), failure[1]
    for status, _, preview in rows:
        if SegStatus(status) is SegStatus.OK:
            state.ok += 1
        else:
            state.failed += 1
        if preview:
            state.preview_paths.append(preview)
    state.seg_paths = sorted({path for _, path, _ in rows if path})
    return state


def open_failure_uids(engine: Engine, stage: Stage, error_class: str, uids: set[str]) -> set[str]:
    """Which of ``uids`` have an open failure of this stage and error class."""
    stmt = select(Failure.object_uid).where(
        Failure.stage == stage, Failure.error_class == error_class, Failure.resolved_at.is_(None))
    with _reading(engine) as conn:
        return set(conn.execute(stmt).scalars()) & uids


def completed_windows(engine: Engine, pacs_aet: str) -> set[tuple[datetime, datetime]]:
    """Windows (UTC bounds) of PACS ``pacs_aet`` whose run completed with no failure."""
    stmt = select(HarvestRun.window_start, HarvestRun.window_end).where(
        HarvestRun.pacs == pacs_aet, HarvestRun.status == RunStatus.COMPLETED,
        HarvestRun.failed == 0)
    with _reading(engine) as conn:
        return {(_utc(a), _utc(b)) for a, b in conn.execute(stmt)}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
