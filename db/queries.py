"""Researchers' queries: filters -> rows or a pandas DataFrame, and statistics.

Example
-------
>>> f = CatalogFilter(kind="line", min_volume_ml=1.0, since=date(2025, 1, 1), model="sam2ct")
>>> frame = query_frame(engine, f)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime

import pandas as pd
from sqlalchemy import Connection, Engine, Select, String, func, select, type_coerce

from db.models import (
    Annotation,
    Failure,
    HarvestRun,
    PresentationState,
    Segmentation,
    Series,
    Study,
)
from db.records import SegStatus


@dataclass(frozen=True)
class CatalogFilter:
    """Which segmentations a query selects; ``None`` means no constraint. Dates are inclusive."""

    kind: str | None = None
    min_volume_ml: float | None = None
    max_volume_ml: float | None = None
    since: date | None = None
    until: date | None = None
    model: str | None = None
    status: SegStatus | None = None
    body_part: str | None = None
    study_instance_uid: str | None = None

    def __post_init__(self) -> None:
        lo, hi = self.min_volume_ml, self.max_volume_ml
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"Invalid volume range {lo}..{hi} mL - minimum above maximum")
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"Invalid date range {self.since}..{self.until} - since after until")
        if self.status is not None:
            object.__setattr__(self, "status", SegStatus(self.status))


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


_COLUMNS = (
    Segmentation.id.label("segmentation_id"), Segmentation.kind,
    type_coerce(Segmentation.status, String).label("status"), Segmentation.model_name, Segmentation.model_version,
    Segmentation.volume_ml, Segmentation.voxels, Segmentation.long_axis_mm,
    Segmentation.short_axis_mm, Segmentation.mean_hu, Segmentation.seg_sop_instance_uid,
    Segmentation.segment_number, Segmentation.seg_path, Segmentation.preview_path,
    Study.patient_pseudonym, Study.study_instance_uid, Study.study_date,
    Series.series_instance_uid, Series.body_part, Series.storage_path.label("series_path"),
    PresentationState.sop_instance_uid.label("gsps_sop_instance_uid"),
    Annotation.gsps_index.label("annotation_index"), Segmentation.created_at,
)


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
    ]
    return stmt.where(*(make(value) for value, make in conditions if value is not None))


def select_segmentations(f: CatalogFilter = CatalogFilter(), limit: int | None = None) -> Select:
    """The SELECT of segmentation rows matching ``f``, ordered by study date, then id."""
    stmt = (select(*_COLUMNS)
            .join(Series, Segmentation.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Annotation, Segmentation.annotation_id == Annotation.id)
            .join(PresentationState, Annotation.presentation_state_id == PresentationState.id))
    stmt = _where(stmt, f).order_by(Segmentation.study_date, Segmentation.id)
    return stmt.limit(limit) if limit is not None else stmt


def _reading(engine: Engine) -> Connection:
    """A connection for one read: autocommit, so no BEGIN / ROLLBACK round trips."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def query_rows(engine: Engine, f: CatalogFilter = CatalogFilter(),
               limit: int | None = None) -> list[SegmentationRow]:
    """Segmentations matching ``f`` as :class:`SegmentationRow` objects."""
    with _reading(engine) as conn:
        return [SegmentationRow(*row) for row in conn.execute(select_segmentations(f, limit))]


def query_frame(engine: Engine, f: CatalogFilter = CatalogFilter(),
                limit: int | None = None) -> pd.DataFrame:
    """Segmentations matching ``f`` as a DataFrame (one row each, SegmentationRow's columns)."""
    rows = query_rows(engine, f, limit)
    names = [field.name for field in fields(SegmentationRow)]
    return pd.DataFrame([[getattr(r, n) for n in names] for r in rows], columns=names)


def stats(engine: Engine, f: CatalogFilter = CatalogFilter()) -> pd.DataFrame:
    """Count, total and mean volume per (kind, model, status) under ``f``."""
    stmt = (select(Segmentation.kind, Segmentation.model_name, Segmentation.status,
                   func.count().label("segmentations"),
                   func.sum(Segmentation.volume_ml).label("total_volume_ml"),
                   func.avg(Segmentation.volume_ml).label("mean_volume_ml"))
            .group_by(Segmentation.kind, Segmentation.model_name, Segmentation.status)
            .order_by(Segmentation.kind, Segmentation.model_name, Segmentation.status))
    needs_join = f.body_part is not None or f.study_instance_uid is not None
    if needs_join:
        stmt = (stmt.join(Series, Segmentation.series_id == Series.id)
                .join(Study, Series.study_id == Study.id))
    with _reading(engine) as conn:
        rows = [(k, m, SegStatus(s).value, int(n), float(t or 0), float(a or 0))
                for k, m, s, n, t, a in conn.execute(_where(stmt, f))]
    return pd.DataFrame(rows, columns=["kind", "model_name", "status", "segmentations",
                                       "total_volume_ml", "mean_volume_ml"])


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
