"""Pipeline results of one series -> the catalog's plain records (db.records).

Every annotation of every GSPS becomes a row: a usable one with its segmentation (ok or failed,
with the reason), an unusable one with its skip reason, so nothing drawn is silently lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

from db.records import (
    AnnotationRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SegStatus,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)
from dicom_io.gsps import Annotation, AnnotationKind, locate
from dicom_io.seg import AlgorithmSpec
from dicom_io.volume import Volume, read_series_facts
from flows.pipeline import ParsedGsps, SegmentResult

TEXT_ONLY = "text annotation: not a prompt"


def _study_date(value: str) -> date | None:
    try:
        return datetime.strptime(value, "%Y%m%d").date() if value else None
    except ValueError:
        return None


def series_records(volume: Volume, series_dir: Path) -> tuple[StudyRecord, SeriesRecord]:
    """Study and series facts from the first slice's header (patient ID goes to the pseudonym)."""
    facts = read_series_facts(volume)
    study = StudyRecord(volume.study_instance_uid, facts.patient_id,
                        _study_date(facts.study_date))
    series = SeriesRecord(
        volume.series_instance_uid, volume.study_instance_uid, facts.modality, facts.body_part,
        len(volume.slices), tuple(round(s, 4) for s in volume.spacing),  # type: ignore[arg-type]
        facts.manufacturer, str(series_dir))
    return study, series


def annotation_record(ann: Annotation, volume: Volume, skip: str | None) -> AnnotationRecord:
    """One annotation placed on the volume (points in voxels and LPS mm when it can be)."""
    located = locate(ann, volume)
    voxel: tuple = ()
    mm: tuple = ()
    if located.points_voxel is not None and located.slice_index is not None:
        voxel = tuple((round(float(c), 3), round(float(r), 3), located.slice_index)
                      for c, r in located.points_voxel)
    if located.points_lps is not None:
        mm = tuple(tuple(round(float(v), 3) for v in p) for p in located.points_lps)
    reason = skip or located.skip_reason or ann.skip_reason
    if reason is None and ann.kind is AnnotationKind.TEXT:
        reason = TEXT_ONLY
    return AnnotationRecord(ann.gsps_sop_instance_uid, ann.index, ann.kind.value,
                            volume.series_instance_uid, located.slice_index, voxel, mm,
                            ann.length_mm, ann.text or None, ann.layer or None, reason)


def segmentation_record(r: SegmentResult, algorithm: AlgorithmSpec) -> SegmentationRecord:
    """One prompt's outcome as a segmentation row (ok, or failed with the reason)."""
    return SegmentationRecord(
        r.gsps_sop_instance_uid, r.annotation_index, algorithm.name, algorithm.version,
        algorithm.checkpoint_sha256 or "",
        SegStatus.OK if r.status == "ok" else SegStatus.FAILED,
        r.seg_sop_instance_uid, r.segment_number, r.seg_path, r.voxels, r.volume_ml,
        r.long_axis_mm or None, r.short_axis_mm or None, r.bbox, r.mean_hu,
        preview_path=r.preview_path, reason=r.reason)


def build_series_results(volume: Volume, series_dir: Path, parsed: Sequence[ParsedGsps],
                         results: Sequence[SegmentResult],
                         algorithm: AlgorithmSpec) -> SeriesResults:
    """Everything one segmented series produced, ready for ``Recorder.record_series_results``."""
    study, series = series_records(volume, series_dir)
    skips = {(r.gsps_sop_instance_uid, r.annotation_index): r.reason
             for r in results if r.status == "skipped"}
    states = tuple(PresentationStateRecord(p.sop_instance_uid, volume.series_instance_uid,
                                           str(p.path)) for p in parsed)
    annotations = tuple(annotation_record(a, volume, skips.get((a.gsps_sop_instance_uid,
                                                                a.index)))
                        for p in parsed for a in p.annotations)
    segmentations = tuple(segmentation_record(r, algorithm) for r in results
                          if r.status in ("ok", "failed") and r.annotation_index >= 0)
    return SeriesResults(study, series, states, annotations, segmentations)
