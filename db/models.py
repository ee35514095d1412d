"""The catalog's tables as SQLAlchemy 2 typed ORM models (identical on SQLite and PostgreSQL).

Research tables (study, series, ...) hold a patient pseudonym only; the mapping from patient ID to
pseudonym lives in ``patient_pseudonym`` so it can be kept apart (other schema, other grants).
"""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.records import ReviewScore, RunStatus, SegStatus, Stage

UID = String(64)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """An Enum column stored as its values in a VARCHAR (same DDL on every database)."""
    return Enum(cls, name=name, native_enum=False, length=16,
                values_callable=lambda c: [m.value for m in c], validate_strings=True)


class Base(DeclarativeBase):
    """Declarative base of every catalog table."""


class PatientPseudonym(Base):
    """Patient ID -> random pseudonym. The only table holding a patient identifier."""

    __tablename__ = "patient_pseudonym"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class HarvestRun(Base):
    """One harvest window over one PACS."""

    __tablename__ = "harvest_run"
    __table_args__ = (UniqueConstraint("pacs", "window_start", "window_end",
                                       name="uq_harvest_run_window"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pacs: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"))
    found: Mapped[int] = mapped_column(Integer, default=0)
    retrieved: Mapped[int] = mapped_column(Integer, default=0)
    segmented: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))


class Study(Base):
    """A study, keyed by its StudyInstanceUID, with the patient's pseudonym."""

    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pseudonym: Mapped[str] = mapped_column(String(32), index=True)
    study_date: Mapped[date | None] = mapped_column(Date, index=True)


class Series(Base):
    """A CT series: acquisition facts and where its files are."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64), index=True)
    slices: Mapped[int] = mapped_column(Integer, default=0)
    spacing_slice_mm: Mapped[float | None] = mapped_column(Float)
    spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    spacing_col_mm: Mapped[float | None] = mapped_column(Float)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    storage_path: Mapped[str | None] = mapped_column(Text)


class PresentationState(Base):
    """A GSPS object and the first series it was recorded with.

    A GSPS drawn on several series is recorded once per series; ``series_id`` stays the first
    one (never overwritten). Each annotation's own series is ``Annotation.series_id``.
    """

    __tablename__ = "presentation_state"
    __table_args__ = (Index("ix_presentation_state_id_uid", "id", "sop_instance_uid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    # the first series it was recorded with (see the class docstring)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    path: Mapped[str | None] = mapped_column(Text)


class Annotation(Base):
    """One graphic of a presentation state, in voxel and patient coordinates, on its own series.

    ``series_id`` is the series the graphic is drawn on (migration 0003), which for a GSPS drawn
    on several series differs from the presentation state's first series.
    """

    __tablename__ = "annotation"
    __table_args__ = (
        UniqueConstraint("presentation_state_id", "gsps_index", name="uq_annotation_gsps_index"),
        # lets a query listing segmentations read the annotation's GSPS and index from the index
        Index("ix_annotation_id_gsps", "id", "presentation_state_id", "gsps_index"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    presentation_state_id: Mapped[int] = mapped_column(
        ForeignKey("presentation_state.id", ondelete="CASCADE"))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    gsps_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    slice_index: Mapped[int | None] = mapped_column(Integer)
    points_voxel: Mapped[list] = mapped_column(JSON, default=list)
    points_mm: Mapped[list] = mapped_column(JSON, default=list)
    length_mm: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)
    layer: Mapped[str | None] = mapped_column(String(64))
    skip_reason: Mapped[str | None] = mapped_column(Text)


class Segmentation(Base):
    """One segment made from one annotation by one model; the facts researchers filter on.

    ``kind``, ``series_id``, ``study_date``, ``gsps_sop_instance_uid`` and ``annotation_index``
    repeat the annotation's, GSPS's and study's so the typical filter (kind + date + volume) is
    one index range, read in date order, and a listing joins only series and study.
    """

    __tablename__ = "segmentation"
    __table_args__ = (
        UniqueConstraint("annotation_id", "model_name", "model_version", "checkpoint_sha256",
                         name="uq_segmentation_annotation_model"),
        # kind = K and a date range come out in ORDER BY (study_date, id) order, so a first page
        # is a range scan that stops at LIMIT; the volume range is checked on the index tuples
        Index("ix_segmentation_kind_date_id_volume", "kind", "study_date", "id", "volume_ml"),
        # covers the stats query (grouped by kind, model, status; sums volume): index-only scan
        Index("ix_segmentation_kind_model_status_volume", "kind", "model_name", "status",
              "volume_ml"),
        Index("ix_segmentation_seg_uid", "seg_sop_instance_uid", "segment_number"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotation.id", ondelete="CASCADE"))
    # the annotation's identity (GSPS UID, graphic index), fixed for life: rows list it unjoined
    gsps_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    annotation_index: Mapped[int | None] = mapped_column(Integer)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    study_date: Mapped[date | None] = mapped_column(Date)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64), default="")
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[SegStatus] = mapped_column(_enum(SegStatus, "seg_status"))
    seg_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    segment_number: Mapped[int | None] = mapped_column(Integer)
    seg_path: Mapped[str | None] = mapped_column(Text)
    voxels: Mapped[int] = mapped_column(Integer, default=0)
    volume_ml: Mapped[float] = mapped_column(Float, default=0.0)
    long_axis_mm: Mapped[float | None] = mapped_column(Float)
    short_axis_mm: Mapped[float | None] = mapped_column(Float)
    bbox: Mapped[list | None] = mapped_column(JSON)
    mean_hu: Mapped[float | None] = mapped_column(Float)
    preview_path: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # automatic quality checks (migration 0004): [{"code": ..., "reason": ...}], NULL = not checked
    quality_flags: Mapped[list | None] = mapped_column(JSON)
    flag_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(),
                                                 index=True)


class Review(Base):
    """One reviewer's score of one segmentation (migration 0005). Re-scoring adds a row: the
    newest row per segmentation is its score, the older ones its history."""

    __tablename__ = "review"
    __table_args__ = (Index("ix_review_segmentation_time", "segmentation_id", "reviewed_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segmentation_id: Mapped[int] = mapped_column(
        ForeignKey("segmentation.id", ondelete="CASCADE"))
    score: Mapped[ReviewScore] = mapped_column(_enum(ReviewScore, "review_score"))
    note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(64))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                  server_default=func.now())


class CatalogKey(Base):
    """A secret kept with the catalog, never with what leaves it (migration 0006): e.g. the key
    that maps UIDs and case ids to stable pseudonyms in every export of this catalog."""

    __tablename__ = "catalog_key"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Failure(Base):
    """A failed step on one object; ``attempts`` counts how often it failed."""

    __tablename__ = "failure"
    __table_args__ = (UniqueConstraint("stage", "object_uid", name="uq_failure_stage_object"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[Stage] = mapped_column(_enum(Stage, "failure_stage"), index=True)
    object_uid: Mapped[str] = mapped_column(String(128))
    error_class: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("harvest_run.id", ondelete="SET NULL"))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SegmentationSummary(Base):
    """Count and total volume of segmentations per (kind, model, status, study month).

    Kept exact by database triggers on ``segmentation`` (migration 0002), in the writing
    transaction: an insert adds, a delete subtracts, an update moving a row subtracts its old
    values and adds its new ones. ``study_month`` is YYYYMM, 0 for an unknown study date.
    Groups whose count fell to 0 stay, with ``n == 0``.
    """

    __tablename__ = "segmentation_summary"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[SegStatus] = mapped_column(_enum(SegStatus, "seg_status"), primary_key=True)
    study_month: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    volume_sum: Mapped[float] = mapped_column(Float, default=0.0)
