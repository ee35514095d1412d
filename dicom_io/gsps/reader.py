"""Read a GSPS file into ``Annotation`` records: one per arrow, line, outline... it draws.

A file that is not a presentation state raises ``DicomInputError``; a bad annotation never does:
it is returned with ``skip_reason`` set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_io.checks import check_structure, described, finite_int, shown, valid_uid
from dicom_io.errors import DicomInputError
from dicom_io.gsps.annotation import POINT_COUNTS, Annotation, AnnotationKind
from dicom_io.gsps.classify import Compound, Drawing, Graphic, TextObject, classify_item
from dicom_io.gsps.geometry import (
    DisplayedArea,
    SpatialTransform,
    Units,
    display_to_pixel,
    displayed_area,
    frame_numbers,
    length_mm,
    pixel_spacing,
    spatial_transform,
)
from dicom_io.printable import printable
from dicom_io.series_index import CtStorage

logger = logging.getLogger(__name__)

# Presentation State Storage SOP classes (grayscale, color, pseudo-color, blending, ...).
_PRESENTATION_STATE_ROOT = "1.2.840.10008.5.1.4.1.1.11."
# Coordinates (PIXEL units) beyond this magnitude are on no image (Rows, Columns < 65536).
MAX_PIXEL_COORDINATE = 100_000.0
# Points this far (PIXEL units) outside the image still count as on its edge.
_EDGE_TOLERANCE_PX = 1e-3


@dataclass(frozen=True)
class _Target:
    """The image an annotation item is drawn on."""

    sop_instance_uid: str | None
    frame: int | None
    series_instance_uid: str | None
    sop_class_uid: str | None
    problem: str | None = None


@dataclass(frozen=True)
class _Context:
    """What converting one item's coordinates needs."""

    target: _Target
    area: DisplayedArea | None
    transform: SpatialTransform | None
    transform_problem: str | None


def read_gsps(
    path: Path, image: Dataset | Sequence[Dataset] | None = None
) -> list[Annotation]:
    """The annotations of one presentation state file, in a stable order.

    Parameters
    ----------
    path
        A GSPS (or other Presentation State Storage) file.
    image
        Optionally the referenced image's header (or the headers of the images available): gives
        PixelSpacing for lengths and Rows/Columns to reject points outside the image; annotations
        on an image not given, or on a localizer, are skipped.

    Raises
    ------
    DicomInputError
        The file is not DICOM, or not a presentation state (the message says what it is).

    Example
    -------
    >>> [a.kind.value for a in read_gsps(Path("GSPS_PS.dcm"))]  # doctest: +SKIP
    ['line']
    """
    path = Path(path)
    return annotations_of(read_presentation_state(path), path, image)


def annotations_of(
    ds: Dataset, path: Path | str = "", image: Dataset | Sequence[Dataset] | None = None
) -> list[Annotation]:
    """The annotations of an already read presentation state (``path`` only names it in logs).

    A malformed annotation item is returned as a skip; a file whose shared parts (referenced
    series, spatial transformation) are unusable raises DicomInputError naming it.
    """
    try:
        return _annotations(ds, path, image)
    except Exception as e:  # noqa: BLE001 - hostile values anywhere in the file
        raise DicomInputError(f"GSPS file {Path(path).name} - unreadable: "
                              f"{described(e)}") from e


def _annotations(ds: Dataset, path: Path | str, image: Dataset | Sequence[Dataset] | None
                 ) -> list[Annotation]:
    uid = str(ds.get("SOPInstanceUID", ""))
    items = ds.get("GraphicAnnotationSequence") or []
    if not items:
        _note_private_only(ds, Path(path))
        return []
    series = _referenced_series(ds)
    transform, transform_problem = _transform(ds)
    drawings: list[tuple[Drawing, _Context, str]] = []
    for number, item in enumerate(items, start=1):
        drawings += _item_or_skip(ds, item, number, series, (transform, transform_problem), path)
    images = _images_by_uid(image)
    return [
        _annotation(uid, index, drawing, ctx, layer, images)
        for index, (drawing, ctx, layer) in enumerate(drawings)
    ]


def _item_or_skip(
    ds: Dataset,
    item: Dataset,
    number: int,
    series: dict[str, tuple[str, str]],
    transform: tuple[SpatialTransform | None, str | None],
    path: Path | str,
) -> list[tuple[Drawing, _Context, str]]:
    """The drawings of one item with their context; a malformed item becomes one recorded skip
    instead of a crash of the batch."""
    try:
        target = _target(item, series)
        area = displayed_area(ds, target.sop_instance_uid, target.frame)
        ctx = _Context(target, area, *transform)
        layer = str(item.get("GraphicLayer", "") or "")
        return [(d, ctx, layer) for d in _item_drawings(item, number, ctx, layer)]
    except Exception as e:  # noqa: BLE001 - one malformed item is a skip, never a crash
        logger.warning("GSPS file %s: annotation item %d unreadable: %s", Path(path).name,
                       number, described(e))
        skip = Drawing(AnnotationKind.TEXT, np.empty((0, 2)), f"item {number}", (3, 0),
                       skip_reason=f"unreadable annotation item: {described(e)}")
        return [(skip, _Context(_Target(None, None, None, None), None, None, None), "")]


def _images_by_uid(image: Dataset | Sequence[Dataset] | None) -> dict[str, Dataset] | None:
    """The given image header(s) by SOP Instance UID (None when none were given)."""
    if image is None:
        return None
    images = [image] if isinstance(image, Dataset) else list(image)
    return {str(ds.get("SOPInstanceUID", "")): ds for ds in images}


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def read_presentation_state(path: Path) -> Dataset:
    """The dataset of ``path`` if it is a presentation state, else a DicomInputError naming the
    file and what it is. Every element is decoded and the structure bounded here
    (:func:`~dicom_io.checks.check_structure`), so a broken file fails here, not later."""
    what = f"GSPS file {path}"
    try:
        ds = pydicom.dcmread(path)
        check_structure(ds, what)
    except DicomInputError:
        raise
    except InvalidDicomError as e:
        raise DicomInputError(f"{what} - not a DICOM file: {described(e)}") from e
    except RecursionError as e:
        raise DicomInputError(f"{what} - sequences nested too deep to read") from e
    except Exception as e:  # noqa: BLE001 - whatever hostile bytes make pydicom raise
        raise DicomInputError(f"{what} - cannot be read: "
                              f"{described(e)}") from e
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if sop_class.startswith(_PRESENTATION_STATE_ROOT) or (not sop_class and modality == "PR"):
        _check_uids(ds, what)
        return ds
    kind = UID(sop_class).name if UID(sop_class).is_valid else shown(sop_class)
    raise DicomInputError(
        f"{what} - is a {kind or 'an object without SOP Class UID'} (modality "
        f"{printable(modality, 16) if modality else 'unknown'}), not a presentation state"
    )


def _check_uids(ds: Dataset, what: str) -> None:
    """The UIDs that name a GSPS in the catalog and in file names must be well formed."""
    for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
        try:
            valid_uid(ds.get(keyword), keyword)
        except ValueError as e:
            raise DicomInputError(f"{what} - {e}") from e


def _note_private_only(ds: Dataset, path: Path) -> None:
    """Log when a PR has no standard graphics but private data that may hold them."""
    groups = sorted({f"{el.tag.group:04X}" for el in ds if el.tag.is_private})
    if groups:
        logger.info(
            "GSPS file %s: no Graphic Annotation Sequence; private group(s) %s may hold "
            "vendor graphics, which are not read", path, ", ".join(groups),
        )


def drawn_series(ds: Dataset) -> tuple[str, ...]:
    """CT series the annotation items of a presentation state are drawn on, in the order of its
    Referenced Series Sequence.

    An item counts when it applies to one image of a CT (or unstated) SOP class. When none does,
    the first referenced series, so that the annotations are still recorded with their skip
    reasons; empty when the presentation state references no series.
    """
    series = _referenced_series(ds)
    drawn = set()
    for item in ds.get("GraphicAnnotationSequence", []):
        target = _target(item, series)
        if target.problem is None and target.series_instance_uid and (
                not target.sop_class_uid or CtStorage.is_ct(target.sop_class_uid)):
            drawn.add(target.series_instance_uid)
    listed = [str(s.get("SeriesInstanceUID", "")) for s in ds.get("ReferencedSeriesSequence", [])]
    return tuple(dict.fromkeys(s for s in listed if s in drawn)) or tuple(listed[:1])


@dataclass(frozen=True)
class GspsTarget:
    """Which study and CT series one GSPS file is drawn on (``drawn_series``, first first)."""

    gsps_path: str
    gsps_sop_instance_uid: str
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]

    @property
    def series_instance_uid(self) -> str:
        """The first series drawn on (annotations on no drawn series belong to it)."""
        return self.series_instance_uids[0]


def read_target(path: str | Path) -> GspsTarget:
    """The header of a GSPS file: the CT series it is drawn on (pixel data and graphics aside).

    Raises DicomInputError naming the file when it cannot be read or references no series.
    """
    ds = read_presentation_state(Path(path))
    name = Path(path).name
    try:
        series = drawn_series(ds)
    except Exception as e:  # noqa: BLE001 - a malformed reference of a hostile file
        raise DicomInputError(f"GSPS {name}: unreadable referenced series ("
                              f"{described(e)})") from e
    if not series:
        raise DicomInputError(f"GSPS {name}: no referenced series (Referenced Series Sequence "
                              "is empty)")
    return GspsTarget(str(path), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), series)


def _referenced_series(ds: Dataset) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (Series Instance UID, SOP Class UID) of every referenced image."""
    out: dict[str, tuple[str, str]] = {}
    for series in ds.get("ReferencedSeriesSequence", []):
        series_uid = str(series.get("SeriesInstanceUID", ""))
        for ref in series.get("ReferencedImageSequence", []):
            out[str(ref.get("ReferencedSOPInstanceUID", ""))] = (
                series_uid, str(ref.get("ReferencedSOPClassUID", "")))
    return out


def _transform(ds: Dataset) -> tuple[SpatialTransform | None, str | None]:
    """The spatial transformation, or the problem with it (only DISPLAY units need it). A
    rotation that is no number at all makes the whole file malformed (a ValueError)."""
    finite_int(ds.get("ImageRotation", 0) or 0, "ImageRotation")
    try:
        return spatial_transform(ds), None
    except (TypeError, ValueError) as e:
        return None, str(e)


def _target(item: Dataset, series: dict[str, tuple[str, str]]) -> _Target:
    """The one image (and frame) an annotation item applies to."""
    refs = list(item.get("ReferencedImageSequence") or [])
    if not refs:
        if len(series) == 1:
            uid, (series_uid, sop_class) = next(iter(series.items()))
            return _Target(uid, None, series_uid or None, sop_class or None)
        return _Target(None, None, None, None, problem=(
            f"annotation applies to all {len(series)} referenced images, not to one slice"))
    if len(refs) > 1:
        return _Target(None, None, None, None, problem=(
            f"annotation applies to {len(refs)} images, not to one slice"))
    ref = refs[0]
    uid = str(ref.get("ReferencedSOPInstanceUID", "") or "") or None
    series_uid, sop_class = series.get(uid or "", ("", ""))
    sop_class = str(ref.get("ReferencedSOPClassUID", "") or sop_class) or None
    frames = frame_numbers(ref)
    problem = None if uid else "Referenced Image Sequence without a SOP Instance UID"
    if len(frames) > 1:
        problem = f"annotation applies to {len(frames)} frames, not to one slice"
    frame = frames[0] if len(frames) == 1 else None
    return _Target(uid, frame, series_uid or None, sop_class, problem)


# ----------------------------------------------------------------------------------------------
# Objects of one item, in PIXEL units
# ----------------------------------------------------------------------------------------------


def _item_drawings(item: Dataset, number: int, ctx: _Context, layer: str) -> list[Drawing]:
    """Classified drawings of one Graphic Annotation item (origins name the item)."""
    graphics = [_graphic(i, g, ctx) for i, g in enumerate(item.get("GraphicObjectSequence", []))]
    texts = [_text(i, t, ctx) for i, t in enumerate(item.get("TextObjectSequence", []))]
    compounds = [
        _compound(i, c, ctx) for i, c in enumerate(item.get("CompoundGraphicSequence", []))
    ]
    drawings = classify_item(graphics, texts, compounds, layer)
    if not drawings and not graphics and not texts and any(el.tag.is_private for el in item):
        drawings = [Drawing(AnnotationKind.TEXT, np.empty((0, 2)), "", (3, 0), skip_reason=(
            "annotation item holds no standard graphic or text object (private tags only)"))]
    display = _uses_display_units(item)
    for d in drawings:
        d.origin = f"item {number}" + (f": {d.origin}" if d.origin else "")
        d.from_display = display and d.skip_reason is None
    return drawings


def _uses_display_units(item: Dataset) -> bool:
    """Whether any object of the item is in DISPLAY units."""
    keywords = ("GraphicAnnotationUnits", "CompoundGraphicUnits", "AnchorPointAnnotationUnits",
                "BoundingBoxAnnotationUnits")
    sequences = ("GraphicObjectSequence", "TextObjectSequence", "CompoundGraphicSequence")
    return any(
        str(obj.get(k, "")) == Units.DISPLAY.value
        for seq in sequences for obj in item.get(seq, []) for k in keywords
    )


def _to_pixel(points: np.ndarray, units: str, ctx: _Context) -> tuple[np.ndarray, str | None]:
    """Points in the given annotation units -> PIXEL units, or the reason they cannot be."""
    if units == Units.PIXEL.value:
        return points, None
    if units == Units.DISPLAY.value:
        uid = ctx.target.sop_instance_uid
        if ctx.area is None:
            return points, f"DISPLAY units but no displayed area for image {uid}"
        if ctx.transform is None:
            return points, f"DISPLAY units but {ctx.transform_problem}"
        return display_to_pixel(points, ctx.area, ctx.transform), None
    return points, f"annotation units '{units or 'missing'}' not supported"


def _points(values: object, dims: object = 2) -> tuple[np.ndarray, str | None]:
    """(N, 2) array from a flat GraphicData / AnchorPoint value, or the problem with it."""
    if dims not in (None, "", 2):
        return np.empty((0, 2)), f"Graphic Dimensions {dims} not supported (only 2)"
    if values is None:
        values = []
    elif isinstance(values, int | float):
        values = [values]  # pydicom gives a lone value as a scalar
    try:
        flat = np.asarray(list(values), dtype=float)  # type: ignore[call-overload]
    except (TypeError, ValueError) as e:
        return np.empty((0, 2)), f"unreadable coordinates: {e}"
    if flat.size % 2:
        return np.empty((0, 2)), f"odd number of coordinates ({flat.size})"
    return flat.reshape(-1, 2), None


def _graphic(index: int, g: Dataset, ctx: _Context) -> Graphic:
    """One Graphic Object Sequence item."""
    return Graphic(*_shape(index, g, "GraphicType", "GraphicAnnotationUnits", ctx, ""))


def _compound(index: int, c: Dataset, ctx: _Context) -> Compound:
    """One Compound Graphic Sequence item (nested compounds are ignored)."""
    return Compound(*_shape(index, c, "CompoundGraphicType", "CompoundGraphicUnits", ctx,
                            "compound "))


def _shape(index: int, item: Dataset, type_keyword: str, units_keyword: str, ctx: _Context,
           what: str) -> tuple[int, str, np.ndarray, int | None, str | None]:
    """(index, type, PIXEL points, compound ID, problem) of a graphic or compound item."""
    kind = str(item.get(type_keyword, "") or "").upper()
    points, problem = _points(item.get("GraphicData"), item.get("GraphicDimensions", 2))
    declared = item.get("NumberOfGraphicPoints")
    if problem is None and declared not in (None, "") and finite_int(
            declared, "NumberOfGraphicPoints") != len(points):
        problem = f"Number of Graphic Points {declared} but {len(points)} points in Graphic Data"
    if problem is None:
        points, problem = _to_pixel(points, str(item.get(units_keyword, "")), ctx)
    if problem is None:
        problem = _coordinate_problem(points, f"{what}{kind or 'graphic'}")
    return index, kind, points, _compound_id(item), problem


def _text(index: int, t: Dataset, ctx: _Context) -> TextObject:
    """One Text Object Sequence item, anchor and box in PIXEL units."""
    value = str(t.get("UnformattedTextValue", "") or "")
    problem = None
    anchor = None
    if t.get("AnchorPoint") is not None:
        pts, problem = _points(t.AnchorPoint)
        if problem is None and len(pts) != 1:
            problem = f"Anchor Point with {len(pts)} points"
        if problem is None:
            pts, problem = _to_pixel(pts, str(t.get("AnchorPointAnnotationUnits", "")), ctx)
        if problem is None:
            problem = _coordinate_problem(pts, "text anchor")
        anchor = pts[0] if problem is None else None
    box = None
    tlhc, brhc = t.get("BoundingBoxTopLeftHandCorner"), t.get("BoundingBoxBottomRightHandCorner")
    if problem is None and tlhc is not None and brhc is not None:
        pts, problem = _points(list(tlhc) + list(brhc))
        if problem is None:
            pts, problem = _to_pixel(pts, str(t.get("BoundingBoxAnnotationUnits", "")), ctx)
        usable = problem is None and _coordinate_problem(pts, "") is None
        box = (pts[0], pts[1]) if usable else None
    visible = str(t.get("AnchorPointVisibility", "N") or "N").upper() == "Y"
    return TextObject(index, value, anchor, visible, box, _compound_id(t), problem)


def _compound_id(item: Dataset) -> int | None:
    """The item's Compound Graphic Instance ID (None when it has none)."""
    value = item.get("CompoundGraphicInstanceID")
    return None if value is None else finite_int(value, "CompoundGraphicInstanceID")


def _coordinate_problem(points: np.ndarray, what: str) -> str | None:
    """Why PIXEL coordinates are unusable: not finite, or beyond any image."""
    if not np.all(np.isfinite(points)):
        return f"{what} has NaN or infinite coordinates"
    if points.size and float(np.max(np.abs(points))) > MAX_PIXEL_COORDINATE:
        return f"{what} has coordinates beyond {MAX_PIXEL_COORDINATE:g} pixels"
    return None


# ----------------------------------------------------------------------------------------------
# Drawing -> Annotation
# ----------------------------------------------------------------------------------------------


def _annotation(
    uid: str, index: int, d: Drawing, ctx: _Context, layer: str,
    images: dict[str, Dataset] | None,
) -> Annotation:
    """The record of one drawing: lengths in mm and any skip reason found on the image."""
    image = None if images is None else images.get(ctx.target.sop_instance_uid or "")
    spacing, source = pixel_spacing(image, ctx.area)
    long_mm, short_mm = _lengths(d, spacing)
    skip = (d.skip_reason or ctx.target.problem or _count_problem(d)
            or _image_problem(d, ctx.target, image, images))
    return Annotation(
        gsps_sop_instance_uid=uid,
        index=index,
        kind=d.kind,
        referenced_sop_instance_uid=ctx.target.sop_instance_uid,
        referenced_frame=ctx.target.frame,
        points=tuple((float(c), float(r)) for c, r in d.points),
        length_mm=long_mm,
        text="\n".join(t for t in d.texts if t),
        layer=layer,
        skip_reason=skip,
        referenced_series_instance_uid=ctx.target.series_instance_uid,
        referenced_sop_class_uid=ctx.target.sop_class_uid,
        units_converted_from_display=d.from_display,
        short_axis_mm=short_mm,
        closed=d.closed,
        spacing_source=source if long_mm is not None else None,
        origin=d.origin,
    )


def _count_problem(d: Drawing) -> str | None:
    """Why a drawing has too few or too many points for its kind (a skip, not a crash)."""
    low, high = POINT_COUNTS[d.kind]
    if low <= len(d.points) <= high:
        return None
    return f"a {d.kind.value} needs {low} to {high} points, got {len(d.points)}"


def _lengths(
    d: Drawing, spacing: tuple[float, float] | None
) -> tuple[float | None, float | None]:
    """(length, short axis) in mm: line length, bidirectional axes, ellipse major axis, circle
    diameter; None without a spacing or for other kinds."""
    pts = d.points
    if spacing is None or len(pts) == 0 or not np.all(np.isfinite(pts)):
        return None, None
    if d.kind is AnnotationKind.LINE and len(pts) == 2:
        return length_mm(pts[0], pts[1], spacing), None
    if d.kind in (AnnotationKind.BIDIRECTIONAL, AnnotationKind.ELLIPSE) and len(pts) == 4:
        return length_mm(pts[0], pts[1], spacing), length_mm(pts[2], pts[3], spacing)
    if d.kind is AnnotationKind.CIRCLE and len(pts) == 2:
        return 2 * length_mm(pts[0], pts[1], spacing), None
    return None, None


def _image_problem(
    d: Drawing, target: _Target, image: Dataset | None, images: dict[str, Dataset] | None
) -> str | None:
    """What is wrong with the drawing on the given image (missing, localizer, outside)."""
    if images is None:
        return None
    if image is None:
        return (f"referenced image {target.sop_instance_uid} is missing: not among the "
                f"{len(images)} image(s) given")
    image_uid = str(image.get("SOPInstanceUID", ""))
    if "LOCALIZER" in [str(v).upper() for v in image.get("ImageType", [])]:
        return f"referenced image {image_uid} is a localizer, not a slice of a volume"
    rows, cols = image.get("Rows"), image.get("Columns")
    if rows and cols and len(d.points) and np.all(np.isfinite(d.points)):
        lo = -_EDGE_TOLERANCE_PX
        c, r = d.points[:, 0], d.points[:, 1]
        if c.min() < lo or r.min() < lo or c.max() > cols - lo or r.max() > rows - lo:
            return f"points outside the image ({cols} columns x {rows} rows)"
    return None
