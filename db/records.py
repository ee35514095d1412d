"""Plain values the pipeline hands to the catalog: primitives only, so db needs none of their classes.

Example
-------
>>> StudyRecord("1.2.3", patient_id="P1", study_date=date(2025, 1, 2))  # doctest: +SKIP
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime


class RunStatus(enum.StrEnum):
    """State of one harvest run. ``INCOMPLETE``: it ran to its end, but its discovery's answers
    did not add up, so the window may hold GSPS it never saw (the backfill and the next
    reconciliation redo it)."""

    RUNNING = "running"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


class SegStatus(enum.StrEnum):
    """Outcome of one annotation: segmented, tried and failed, or skipped (not a usable prompt:
    the catalog keeps the reason on the annotation, so no segmentation row is ``skipped``)."""

    OK = "ok"
    FAILED = "failed"
    NEEDS_REVIEW = "needs-review"
    SKIPPED = "skipped"


class ReviewScore(enum.StrEnum):
    """A reviewer's verdict on one segmentation, the paper's four-point scale."""

    ACCEPTABLE = "acceptable"
    MINOR_EDITS = "minor"
    MAJOR_EDITS = "major"
    UNUSABLE = "unusable"


class Stage(enum.StrEnum):
    """Pipeline stage where a failure happened."""

    DISCOVER = "discover"
    RETRIEVE = "retrieve"
    PARSE = "parse"
    LOAD = "load"
    SEGMENT = "segment"
    WRITE_SEG = "write_seg"
    STORE = "store"
    CATALOG = "catalog"
    EXPORT = "export"


Point = tuple[float, ...]


@dataclass(frozen=True)
class HarvestRunRecord:
    """One harvest window over one PACS; (pacs, window_start, window_end) identifies it."""

    pacs: str
    window_start: datetime
    window_end: datetime
    status: RunStatus = RunStatus.RUNNING
    found: int = 0
    retrieved: int = 0
    segmented: int = 0
    failed: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    flow_run_id: str | None = None


@dataclass(frozen=True)
class StudyRecord:
    """A study; ``patient_id`` only travels to the pseudonym table, never to research tables."""

    study_instance_uid: str
    patient_id: str
    study_date: date | None = None


@dataclass(frozen=True)
class SeriesRecord:
    """A CT series and where its files are stored."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str = "CT"
    body_part: str | None = None
    slices: int = 0
    spacing_mm: tuple[float, float, float] | None = None  # (slice, row, column)
    manufacturer: str | None = None
    storage_path: str | None = None


@dataclass(frozen=True)
class PresentationStateRecord:
    """A GSPS and the series it is recorded with (one of those it is drawn on)."""

    sop_instance_uid: str
    series_instance_uid: str
    path: str | None = None


@dataclass(frozen=True)
class AnnotationRecord:
    """One graphic of a GSPS; (gsps_sop_instance_uid, index) identifies it."""

    gsps_sop_instance_uid: str
    index: int
    kind: str
    series_instance_uid: str | None = None  # the series it is drawn on; None: the one recorded
    slice_index: int | None = None
    points_voxel: tuple[Point, ...] = ()
    points_mm: tuple[Point, ...] = ()
    length_mm: float | None = None
    text: str | None = None
    layer: str | None = None
    skip_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class SegmentationRecord:
    """One segment made from one annotation by one model (name, version, checkpoint); its
    measures are ``sam2ct.geometry.MaskMeasures``' (same names)."""

    gsps_sop_instance_uid: str
    annotation_index: int
    model_name: str
    model_version: str = ""
    checkpoint_sha256: str = ""
    status: SegStatus = SegStatus.OK
    seg_sop_instance_uid: str | None = None
    segment_number: int | None = None
    seg_path: str | None = None
    voxels: int = 0
    volume_ml: float = 0.0
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    bbox: tuple[int, int, int, int, int, int] | None = None  # slice0, row0, col0, slice1, row1, col1
    mean_hu: float | None = None
    preview_path: str | None = None
    reason: str | None = None
    #: automatic quality flags as (code, reason) pairs (``sam2ct.quality``); None: not checked
    quality_flags: tuple[tuple[str, str], ...] | None = None

    @property
    def flag_count(self) -> int | None:
        """How many quality flags were raised; None when the mask was not checked."""
        return None if self.quality_flags is None else len(self.quality_flags)


@dataclass(frozen=True)
class FailureRecord:
    """A failed step on one object; recording it again counts one more attempt."""

    stage: Stage
    object_uid: str
    error_class: str
    message: str
    run_id: int | None = None


@dataclass(frozen=True)
class SeriesResults:
    """Everything one segmented series produced, recorded in one transaction."""

    study: StudyRecord
    series: SeriesRecord
    presentation_states: tuple[PresentationStateRecord, ...] = ()
    annotations: tuple[AnnotationRecord, ...] = ()
    segmentations: tuple[SegmentationRecord, ...] = field(default=())
