"""Segment one CT series from its presentation states: the one home of that business step.

    read each GSPS -> locate each annotation on the volume (once) -> prompts -> masks (the model)
    -> measures (``sam2ct.geometry.measure_mask``) and quality flags (``sam2ct.quality``)
    -> one SEG per GSPS + previews
    -> what became of every annotation (``AnnotationResult``) -> the catalog's records

:func:`segment_series` serves ``sam2ct segment`` and the harvest's segment jobs
(:mod:`flows.segment_jobs`, which load the series and write the records) alike. Plain Python:
no Prefect, no SQL; DICOM is read and written through ``dicom_io``, masks come from ``sam2ct``.

Example
-------
>>> parsed, failures = read_gsps_files([Path("pr.dcm")])  # doctest: +SKIP
>>> run = segment_series(load_series(Path("ct")), parsed, choose_segmenter("classical"),
...                      Path("out"), failures)  # doctest: +SKIP
>>> Recorder(engine).record_series_results(run.catalog_records(Path("ct")))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from db.records import (
    AnnotationRecord,
    FailureRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SegStatus,
    SeriesRecord,
    SeriesResults,
    Stage,
    StudyRecord,
)
from dicom_io.checks import described
from dicom_io.gsps import (
    Annotation,
    AnnotationKind,
    LocatedAnnotation,
    annotations_of,
    locate,
    read_presentation_state,
)
from dicom_io.seg import (
    AlgorithmSpec,
    PresentationStateRef,
    SegmentSpec,
    render_preview,
    write_seg,
)
from dicom_io.volume import Volume, read_series_facts
from sam2ct.geometry import MaskMeasures, measure_mask
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.quality import QualityFlag, quality_flags
from sam2ct.registry import Choice
from sam2ct.segmenter import segment_with_scores

log = logging.getLogger(__name__)

TEXT_ONLY = "text annotation: not a prompt"
EMPTY_MASK = "the model returned an empty mask"


# --- what goes in ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedGsps:
    """One GSPS file and the annotations read from it (each file is parsed once)."""

    path: Path
    sop_instance_uid: str
    annotations: tuple[Annotation, ...]
    reference: PresentationStateRef | None = None  # what a SEG of it references


@dataclass(frozen=True)
class GspsFailure:
    """A GSPS file that could not be read as one (recorded; the other files go on)."""

    path: Path
    error: Exception


def parse_gsps(path: Path) -> ParsedGsps:
    """Read one presentation state; DicomInputError (naming the file) when it is not one."""
    path = Path(path)
    ds = read_presentation_state(path)
    return ParsedGsps(path, str(ds.SOPInstanceUID), tuple(annotations_of(ds, path)),
                      PresentationStateRef.from_dataset(ds))


def read_gsps_files(paths: Sequence[Path]) -> tuple[list[ParsedGsps], list[GspsFailure]]:
    """Every readable GSPS of ``paths``, and the files that are not one."""
    parsed, failures = [], []
    for path in map(Path, paths):
        try:
            parsed.append(parse_gsps(path))
        except Exception as exc:  # noqa: BLE001 - one bad file is its failure, never the batch's
            log.warning("GSPS file %s: %s", path.name, described(exc))
            failures.append(GspsFailure(path, exc))
    return parsed, failures


# --- what comes out -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class AnnotationResult:
    """What became of one annotation: segmented (``ok``), tried and ``failed``, or ``skipped``,
    with the reason; ``segmentation`` is the catalog's row of a tried one."""

    located: LocatedAnnotation
    gsps_file: str
    status: SegStatus
    reason: str | None = None
    segmentation: SegmentationRecord | None = None
    seconds: float = 0.0

    @property
    def annotation(self) -> Annotation:
        """The annotation as read from its GSPS."""
        return self.located.annotation

    @property
    def text_only(self) -> bool:
        """A plain text annotation: kept in the catalog, never a prompt nor a skip to report."""
        return self.reason == TEXT_ONLY

    def to_json(self) -> dict[str, Any]:
        """The summary of this annotation printed by ``sam2ct segment``."""
        ann, seg = self.annotation, self.segmentation
        tried = seg is not None
        measures = {k: getattr(seg, k) if tried else None for k in (
            "seg_path", "seg_sop_instance_uid", "segment_number", "preview_path", "voxels",
            "volume_ml", "long_axis_mm", "short_axis_mm", "bbox", "mean_hu")}
        flags = None if seg is None or seg.quality_flags is None else [
            {"code": code, "reason": reason} for code, reason in seg.quality_flags]
        return {"gsps_sop_instance_uid": ann.gsps_sop_instance_uid,
                "annotation_index": ann.index, "kind": ann.kind.value,
                "gsps_file": self.gsps_file,
                "slice_index": self.located.slice_index if tried else None,
                "status": self.status.value, "reason": self.reason, **measures,
                "quality_flags": flags, "flag_count": None if flags is None else len(flags),
                "length_mm": ann.length_mm if tried else None, "seconds": self.seconds}


@dataclass
class SeriesRun:
    """What segmenting one series gave: its GSPS, each annotation's result, the algorithm."""

    volume: Volume
    parsed: list[ParsedGsps]
    results: list[AnnotationResult]
    algorithm: AlgorithmSpec
    warning: str | None  # the fallback warning (None when SAM2CT ran)
    failures: list[GspsFailure] = field(default_factory=list)
    #: (start, end) wall-clock times (time.time()) of each model call
    model_spans: list[tuple[float, float]] = field(default_factory=list)

    def count(self, status: SegStatus) -> int:
        """Annotations that ended with ``status`` (plain text annotations not counted)."""
        return sum(1 for r in self.results if r.status is status and not r.text_only)

    def to_json(self) -> list[dict[str, Any]]:
        """One summary per unreadable GSPS file and per annotation (plain text left out)."""
        return ([_failure_json(f) for f in self.failures]
                + [r.to_json() for r in self.results if not r.text_only])

    def failure_records(self, run_id: int | None = None) -> list[FailureRecord]:
        """The unreadable GSPS files as parse failures (object: the file's stem, its SOP UID in
        the staging area)."""
        return [FailureRecord(Stage.PARSE, f.path.stem, type(f.error).__name__, str(f.error),
                              run_id) for f in self.failures]

    def catalog_records(self, series_dir: Path) -> SeriesResults:
        """Everything this series produced, for ``Recorder.record_series_results``: every
        annotation of every GSPS is a row, so nothing drawn is silently lost."""
        volume, facts = self.volume, read_series_facts(self.volume)
        study = StudyRecord(volume.study_instance_uid, facts.patient_id,
                            _study_date(facts.study_date))
        series = SeriesRecord(
            volume.series_instance_uid, volume.study_instance_uid, facts.modality,
            facts.body_part, len(volume.slices),
            tuple(round(s, 4) for s in volume.spacing),  # type: ignore[arg-type]
            facts.manufacturer, str(series_dir))
        states = tuple(PresentationStateRecord(p.sop_instance_uid, volume.series_instance_uid,
                                               str(p.path)) for p in self.parsed)
        return SeriesResults(study, series, states,
                             tuple(_annotation_record(r, volume) for r in self.results),
                             tuple(r.segmentation for r in self.results if r.segmentation))


def _failure_json(failure: GspsFailure) -> dict[str, Any]:
    return {"gsps_sop_instance_uid": "", "annotation_index": -1, "kind": "gsps",
            "gsps_file": str(failure.path), "status": SegStatus.FAILED.value,
            "reason": str(failure.error)}


def _study_date(value: str) -> date | None:
    try:
        return datetime.strptime(value, "%Y%m%d").date() if value else None
    except ValueError:
        return None


def _annotation_record(result: AnnotationResult, volume: Volume) -> AnnotationRecord:
    """One annotation placed on the volume (points in voxels and LPS mm when it could be)."""
    located, ann = result.located, result.annotation
    voxel: tuple = ()
    mm: tuple = ()
    if located.points_voxel is not None and located.slice_index is not None:
        voxel = tuple((round(float(c), 3), round(float(r), 3), located.slice_index)
                      for c, r in located.points_voxel)
    if located.points_lps is not None:
        mm = tuple(tuple(round(float(v), 3) for v in p) for p in located.points_lps)
    skip = result.reason if result.status is SegStatus.SKIPPED else None
    return AnnotationRecord(ann.gsps_sop_instance_uid, ann.index, ann.kind.value,
                            volume.series_instance_uid, located.slice_index, voxel, mm,
                            ann.length_mm, ann.text or None, ann.layer or None, skip)


# --- doing it -------------------------------------------------------------------------------

def algorithm_of(choice: Choice) -> AlgorithmSpec:
    """Algorithm identification for the SEG, carrying the fallback warning when there is one."""
    segmenter = choice.segmenter
    return AlgorithmSpec(name=segmenter.name, version=segmenter.version,
                         checkpoint_sha256=segmenter.checkpoint_sha256, note=choice.warning)


def segment_series(volume: Volume, parsed: Sequence[ParsedGsps], choice: Choice, out_dir: Path,
                   failures: Sequence[GspsFailure] = (),
                   on_progress: Callable[[ParsedGsps], None] | None = None) -> SeriesRun:
    """Segment every usable annotation of ``parsed`` on ``volume``; one SEG per GSPS (with a
    preview PNG per segment) goes to ``out_dir``. Unusable annotations are skips with their
    reason, an empty mask a failure; neither stops the others. ``on_progress`` (optional) is
    called after each GSPS, e.g. to advance a progress bar."""
    run = SeriesRun(volume, list(parsed), [], algorithm_of(choice), choice.warning,
                    list(failures))
    out_dir.mkdir(parents=True, exist_ok=True)
    for gsps in run.parsed:
        run.results.extend(_segment_gsps(run, gsps, choice, out_dir))
        if on_progress is not None:
            on_progress(gsps)
    return run


@dataclass(frozen=True)
class _Prompted:
    """An annotation that became a prompt, and then a mask with its measures and flags."""

    located: LocatedAnnotation
    prompt: Prompt
    mask: np.ndarray | None = None
    measures: MaskMeasures | None = None
    flags: tuple[QualityFlag, ...] = ()


#: every annotation kind but text is a prompt kind of the same value (a test holds them so)
_PROMPT_KIND = {kind: PromptKind(kind.value) for kind in AnnotationKind
                if kind is not AnnotationKind.TEXT}


def _segment_gsps(run: SeriesRun, gsps: ParsedGsps, choice: Choice,
                  out_dir: Path) -> list[AnnotationResult]:
    """The annotations of one GSPS: skips, failures, then one SEG of the rest. Whatever goes
    wrong with one annotation, or with the model or the SEG of this GSPS, is recorded as their
    failure with the stage and reason; the other GSPS of the series go on."""
    results, todo = [], []
    for ann in gsps.annotations:
        prompted, skipped = _prompted(run.volume, ann, gsps)
        if skipped is not None:
            results.append(skipped)
        else:
            todo.append(prompted)
    if not todo:
        return results
    started = time.time()
    try:
        scored = segment_with_scores(choice.segmenter, run.volume.array, run.volume.spacing,
                                     [t.prompt for t in todo])
    except Exception as exc:  # noqa: BLE001 - a model error is these annotations' failure
        return results + _failed(run, todo, gsps, f"segment: {described(exc)}")
    finally:
        run.model_spans.append((started, time.time()))
    seconds = round((run.model_spans[-1][1] - started) / len(todo), 3)
    kept = []
    for item, (mask, score) in zip(todo, scored, strict=True):
        if mask.any():
            measures = measure_mask(mask, run.volume.spacing, run.volume.array)
            flags = quality_flags(mask, run.volume.spacing, item.prompt, measures,
                                  run.volume.array, model_score=score)
            kept.append(_Prompted(item.located, item.prompt, mask, measures, tuple(flags)))
        else:
            results += _failed(run, [item], gsps, EMPTY_MASK, seconds)
    if kept:
        try:
            results.extend(_write_outputs(run, kept, gsps, out_dir, seconds))
        except Exception as exc:  # noqa: BLE001 - a SEG that cannot be written fails its GSPS
            results += _failed(run, kept, gsps, f"seg_write: {described(exc)}", seconds)
    return results


def _prompted(volume: Volume, ann: Annotation, gsps: ParsedGsps
              ) -> tuple[_Prompted | None, AnnotationResult | None]:
    """The annotation placed on the volume as a prompt, or its skip with the reason."""
    try:
        located = locate(ann, volume)
    except Exception as exc:  # noqa: BLE001 - an annotation that cannot be placed is a skip
        located = LocatedAnnotation(ann, skip_reason=f"cannot be placed: {described(exc)}")
    prompt, reason = prompt_of(located)
    if prompt is None:
        return None, AnnotationResult(located=located, gsps_file=str(gsps.path),
                                      status=SegStatus.SKIPPED, reason=reason)
    return _Prompted(located, prompt), None


def _failed(run: SeriesRun, items: Sequence[_Prompted], gsps: ParsedGsps, reason: str,
            seconds: float = 0.0) -> list[AnnotationResult]:
    """These annotations tried and failed: a catalog row each, with the reason."""
    if reason != EMPTY_MASK:
        log.warning("GSPS %s: %d annotation(s) failed: %s", gsps.sop_instance_uid, len(items),
                    reason)
    return [AnnotationResult(
        located=item.located, gsps_file=str(gsps.path), status=SegStatus.FAILED, reason=reason,
        segmentation=_segmentation(run.algorithm, item.located.annotation,
                                   status=SegStatus.FAILED, reason=reason),
        seconds=seconds) for item in items]


def prompt_of(located: LocatedAnnotation) -> tuple[Prompt | None, str | None]:
    """The annotation as a prompt on the volume, or why it cannot be one."""
    ann = located.annotation
    if ann.kind is AnnotationKind.TEXT and located.skip_reason is None:
        return None, TEXT_ONLY
    if located.skip_reason is not None:
        return None, located.skip_reason
    try:
        return Prompt(_PROMPT_KIND[ann.kind], located.slice_index, located.points_voxel,
                      identifier=ann.identifier), None
    except ValueError as exc:  # the annotation read well, but is no valid prompt
        return None, str(exc)


def _segmentation(algorithm: AlgorithmSpec, ann: Annotation, **fields: Any
                  ) -> SegmentationRecord:
    """The catalog's row of one tried annotation, for this algorithm."""
    return SegmentationRecord(
        gsps_sop_instance_uid=ann.gsps_sop_instance_uid, annotation_index=ann.index,
        model_name=algorithm.name, model_version=algorithm.version,
        checkpoint_sha256=algorithm.checkpoint_sha256 or "", **fields)


def _write_outputs(run: SeriesRun, kept: list[_Prompted], gsps: ParsedGsps, out_dir: Path,
                   seconds: float) -> list[AnnotationResult]:
    """Write the SEG of one GSPS and a preview PNG per segment; the annotations' results."""
    segments = [SegmentSpec.from_annotation(k.located.annotation) for k in kept]
    seg_path = write_seg(run.volume, [k.mask for k in kept], segments, run.algorithm, out_dir,
                         presentation_state=gsps.reference)
    results = []
    for number, k in enumerate(kept, start=1):
        png = out_dir / "previews" / f"{seg_path.stem}-{number}.png"
        render_preview(run.volume, k.mask, k.prompt.points, k.prompt.slice_index,
                       k.prompt.kind.value, png)
        m = k.measures
        row = _segmentation(
            run.algorithm, k.located.annotation, status=SegStatus.OK,
            seg_sop_instance_uid=seg_path.stem, segment_number=number, seg_path=str(seg_path),
            voxels=m.voxels, volume_ml=m.volume_ml, long_axis_mm=m.long_axis_mm or None,
            short_axis_mm=m.short_axis_mm or None, bbox=m.bbox, mean_hu=m.mean_hu,
            preview_path=str(png),
            quality_flags=tuple((f.code.value, f.reason) for f in k.flags))
        results.append(AnnotationResult(located=k.located, gsps_file=str(gsps.path),
                                        status=SegStatus.OK, segmentation=row,
                                        seconds=seconds))
    return results
