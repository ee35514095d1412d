"""Segment one CT series from its presentation states: the steps shared by the CLI and the flows.

volume -> annotations -> prompts -> masks -> one SEG per (GSPS, series) + previews -> summaries.
Each step takes and returns plain values so a Prefect task can wrap it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dicom_io.errors import DicomInputError
from dicom_io.gsps import (
    Annotation,
    AnnotationKind,
    annotations_of,
    locate,
    read_presentation_state,
)
from dicom_io.seg import AlgorithmSpec, SegmentSpec, render_preview, write_seg
from dicom_io.volume import Volume
from sam2ct.geometry import long_axis_mm, longest_chord, longest_perpendicular
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.registry import choose_segmenter
from sam2ct.segmenter import Segmenter

log = logging.getLogger(__name__)

# Annotation kinds that become prompts; text-only annotations do not.
_PROMPT_KIND = {
    AnnotationKind.LINE: PromptKind.LINE,
    AnnotationKind.BIDIRECTIONAL: PromptKind.BIDIRECTIONAL,
    AnnotationKind.ARROW: PromptKind.ARROW,
    AnnotationKind.ELLIPSE: PromptKind.ELLIPSE,
    AnnotationKind.CIRCLE: PromptKind.CIRCLE,
    AnnotationKind.POLYGON: PromptKind.POLYGON,
    AnnotationKind.POINT: PromptKind.POINT,
}


@dataclass
class SegmentResult:
    """One prompt's outcome: a segment in a SEG file, or a skip / failure with its reason."""

    gsps_sop_instance_uid: str
    annotation_index: int
    kind: str
    gsps_file: str | None = None
    slice_index: int | None = None
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    seg_path: str | None = None
    seg_sop_instance_uid: str | None = None
    segment_number: int | None = None
    preview_path: str | None = None
    voxels: int = 0
    volume_ml: float = 0.0
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    bbox: tuple[int, int, int, int, int, int] | None = None  # slice0,row0,col0, slice1,row1,col1
    mean_hu: float | None = None
    length_mm: float | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The JSON summary printed by `sam2ct segment`."""
        return asdict(self)


@dataclass(frozen=True)
class ParsedGsps:
    """One GSPS file and the annotations read from it (each file is parsed once)."""

    path: Path
    sop_instance_uid: str
    annotations: tuple[Annotation, ...]


def parse_gsps(path: Path) -> ParsedGsps:
    """Read one presentation state; DicomInputError (naming the file) when it is not one."""
    path = Path(path)
    ds = read_presentation_state(path)
    return ParsedGsps(path, str(ds.SOPInstanceUID), tuple(annotations_of(ds, path)))


@dataclass
class PromptedAnnotation:
    """An annotation that became a prompt on the volume."""

    annotation: Annotation
    prompt: Prompt


def annotations_to_prompts(volume: Volume, parsed: ParsedGsps) -> tuple[list[PromptedAnnotation],
                                                                       list[SegmentResult]]:
    """Turn the usable annotations of one parsed GSPS into prompts on ``volume``.

    Returns the prompts and the recorded skips (unusable annotations, text-only ones excluded).
    """
    prompted: list[PromptedAnnotation] = []
    skips: list[SegmentResult] = []
    for ann in parsed.annotations:
        if ann.kind == AnnotationKind.TEXT and ann.skip_reason is None:
            continue
        prompt, reason = _prompt_of(ann, volume)
        if prompt is None:
            skips.append(SegmentResult(ann.gsps_sop_instance_uid, ann.index, ann.kind.value,
                                       gsps_file=str(parsed.path), status="skipped",
                                       reason=reason))
            continue
        prompted.append(PromptedAnnotation(ann, prompt))
    return prompted, skips


def _prompt_of(ann: Annotation, volume: Volume) -> tuple[Prompt | None, str | None]:
    """The annotation as a prompt on ``volume``, or why it cannot be one."""
    located = locate(ann, volume)
    if located.skip_reason is not None:
        return None, located.skip_reason
    if ann.kind not in _PROMPT_KIND:
        return None, f"annotation kind '{ann.kind.value}' is not a usable prompt"
    try:
        return Prompt(_PROMPT_KIND[ann.kind], located.slice_index, located.points_voxel,
                      identifier=ann.identifier), None
    except ValueError as exc:  # the annotation read well, but is no valid prompt
        return None, str(exc)


def segment_label(ann: Annotation) -> str:
    """Segment label from the annotation: its kind and measured length."""
    if ann.length_mm:
        return f"{ann.kind.value} {ann.length_mm:.1f} mm"
    return ann.kind.value


def algorithm_of(segmenter: Segmenter, warning: str | None) -> AlgorithmSpec:
    """Algorithm identification for the SEG, carrying the fallback warning when there is one."""
    return AlgorithmSpec(name=segmenter.name, version=segmenter.version,
                         checkpoint_sha256=segmenter.checkpoint_sha256, note=warning)


def segment_gsps(volume: Volume, parsed: ParsedGsps, segmenter: Segmenter,
                 algorithm: AlgorithmSpec, out_dir: Path,
                 spans: list[tuple[float, float]] | None = None) -> list[SegmentResult]:
    """Segment every usable annotation of one GSPS and write them as one SEG with previews.

    ``spans`` gets the (start, end) wall-clock time (``time.time()``) of the model call.
    """
    prompted, results = annotations_to_prompts(volume, parsed)
    if not prompted:
        return results
    started = time.time()
    masks = segmenter.segment(volume.array, volume.spacing, [p.prompt for p in prompted])
    ended = time.time()
    if spans is not None:
        spans.append((started, ended))
    seconds = (ended - started) / len(prompted)
    kept: list[tuple[PromptedAnnotation, np.ndarray, SegmentResult]] = []
    for item, mask in zip(prompted, masks, strict=True):
        ann = item.annotation
        result = SegmentResult(ann.gsps_sop_instance_uid, ann.index, ann.kind.value,
                               gsps_file=str(parsed.path), slice_index=item.prompt.slice_index,
                               length_mm=ann.length_mm, seconds=round(seconds, 3))
        if not mask.any():
            result.status, result.reason = "failed", "the model returned an empty mask"
            results.append(result)
            continue
        _measure(result, mask, volume)
        kept.append((item, mask, result))
    if kept:
        _write_outputs(volume, kept, algorithm, out_dir)
        results.extend(r for _, _, r in kept)
    return results


def _measure(result: SegmentResult, mask: np.ndarray, volume: Volume) -> None:
    """Volume, long axis (longest axial diameter), short axis (perpendicular, on the slice of
    largest area), bounding box and mean HU of a mask.

    Counted on the mask's bounding box (a lesion's box is a small part of the volume); the axes
    on whole planes of its slices, since the short axis depends on where the lesion lies.
    """
    box = bounding_box(mask)
    lesion, planes = mask[box], mask[box[0]]
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    result.voxels = int(np.count_nonzero(lesion))
    result.volume_ml = round(result.voxels * voxel_ml, 3)
    largest = planes[int(np.argmax(lesion.sum(axis=(1, 2))))]
    in_plane = volume.spacing[1:]
    axis = longest_chord(largest, in_plane)
    result.long_axis_mm = round(long_axis_mm(planes, volume.spacing), 2)
    result.short_axis_mm = round(longest_perpendicular(largest, in_plane, axis).length_mm, 2)
    result.bbox = (*(b.start for b in box), *(b.stop - 1 for b in box))  # type: ignore[assignment]
    result.mean_hu = round(float(volume.array[box][lesion].mean()), 1)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest (slices, rows, columns) box holding every voxel of a non-empty 3D mask."""
    return ndimage.find_objects(mask.astype(np.uint8))[0]


def _write_outputs(volume: Volume, kept: list, algorithm: AlgorithmSpec, out_dir: Path) -> None:
    """Write the SEG of one GSPS and a preview PNG per segment; fill in the results' paths."""
    gsps_uid = kept[0][0].annotation.gsps_sop_instance_uid
    segments = [SegmentSpec.for_annotation(item.annotation.gsps_sop_instance_uid,
                                           item.annotation.index, item.annotation.kind.value,
                                           segment_label(item.annotation))
                for item, _, _ in kept]
    seg_path = write_seg(volume, [m for _, m, _ in kept], segments, algorithm, out_dir,
                         presentation_state_uid=gsps_uid)
    for number, (item, mask, result) in enumerate(kept, start=1):
        result.seg_path, result.segment_number = str(seg_path), number
        result.seg_sop_instance_uid = seg_path.stem
        png = out_dir / "previews" / f"{seg_path.stem}-{number}.png"
        render_preview(volume, mask, item.prompt.points, item.prompt.slice_index,
                       item.prompt.kind.value, png)
        result.preview_path = str(png)


@dataclass
class SeriesRun:
    """What segmenting one series gave: the parsed GSPS, per-prompt results, the algorithm."""

    parsed: list[ParsedGsps]
    results: list[SegmentResult]
    algorithm: AlgorithmSpec
    warning: str | None


def segment_series(volume: Volume, gsps_files: Sequence[Path], out_dir: Path, model: str = "auto",
                   device: str | None = None) -> SeriesRun:
    """Segment a series from all its GSPS files; a bad GSPS is recorded, the batch goes on.

    ``warning`` is the fallback warning (None when SAM2CT ran).
    """
    choice = choose_segmenter(model, device=device)
    algorithm = algorithm_of(choice.segmenter, choice.warning)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = SeriesRun([], [], algorithm, choice.warning)
    for gsps_file in map(Path, gsps_files):
        try:
            parsed = parse_gsps(gsps_file)
        except DicomInputError as exc:
            log.warning("%s", exc)
            run.results.append(SegmentResult("", -1, "gsps", gsps_file=str(gsps_file),
                                             status="failed", reason=str(exc)))
            continue
        run.parsed.append(parsed)
        run.results.extend(segment_gsps(volume, parsed, choice.segmenter, algorithm, out_dir))
    return run
