"""Grayscale Softcopy Presentation States drawn the way real viewers store arrows and calipers.

One function per encoding of ../shared/docs/gsps-encodings.md. Each takes the lesion's marks in
(column, row) voxel indices and returns a ``Drawing``: the Graphic Annotation items plus the
presentation settings that the encoding needs (displayed area, rotation). ``gsps_dataset`` wraps a
drawing in a full GSPS IOD that references one CT image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, GrayscaleSoftcopyPresentationStateStorage

from dicom_io.synth.ct_writer import (
    RESCALE_INTERCEPT,
    StudyInfo,
    file_meta,
    patient_study_attributes,
)
from dicom_io.synth.measure import Marks


class Encoding(StrEnum):
    """How an annotation is stored (manifest value ``encoding``)."""

    AGFA_ARROW = "agfa-arrow"
    TEXT_ANCHOR_ARROW = "text-anchor-arrow"
    COMPOUND_ARROW = "compound-arrow"
    LAYER_ARROW = "layer-arrow"
    LINE_MM = "line-mm"
    BIDIRECTIONAL = "bidirectional"
    DISPLAY_UNITS = "display-units"
    ROTATED = "rotated"
    ELLIPSE = "ellipse"
    CIRCLE = "circle"


ARROW_ENCODINGS = (Encoding.AGFA_ARROW, Encoding.TEXT_ANCHOR_ARROW, Encoding.COMPOUND_ARROW,
                   Encoding.LAYER_ARROW)
LINE_ENCODINGS = (Encoding.LINE_MM, Encoding.BIDIRECTIONAL, Encoding.DISPLAY_UNITS,
                  Encoding.ROTATED)
REGION_ENCODINGS = (Encoding.ELLIPSE, Encoding.CIRCLE)

EXPECTED_KINDS: dict[Encoding, tuple[str, ...]] = {
    **{e: ("arrow",) for e in ARROW_ENCODINGS},
    Encoding.LINE_MM: ("line",),
    Encoding.BIDIRECTIONAL: ("bidirectional",),
    Encoding.DISPLAY_UNITS: ("line",),
    Encoding.ROTATED: ("line",),
    Encoding.ELLIPSE: ("ellipse",),
    Encoding.CIRCLE: ("circle",),
}


@dataclass(frozen=True)
class ImageRef:
    """The CT image a GSPS draws on."""

    sop_instance_uid: str
    rows: int
    columns: int
    pixel_spacing: float
    sop_class_uid: str = CTImageStorage
    rescale_intercept: float = RESCALE_INTERCEPT
    rescale_slope: float = 1.0


@dataclass(frozen=True)
class Drawing:
    """Graphic Annotation items of one encoding and the display settings they rely on.

    ``points`` are the intended geometry in PIXEL coordinates (column, row; 0 = pixel corner):
    arrows (tip, tail), lines (end, end), bidirectional (long, long, short, short), ellipse
    (major, major, minor, minor), circle (centre, rim).
    """

    items: list[Dataset]
    layers: tuple[str, ...]
    points: np.ndarray
    displayed_area: tuple[tuple[int, int], tuple[int, int]] | None = None  # TLHC, BRHC (1-based)
    rotation: int = 0
    length_mm: float | None = None


def _graphic(points: np.ndarray, graphic_type: str, units: str = "PIXEL",
             filled: str | None = None) -> Dataset:
    """One Graphic Object Sequence item."""
    item = Dataset()
    item.GraphicAnnotationUnits = units
    item.GraphicDimensions = 2
    item.NumberOfGraphicPoints = len(points)
    item.GraphicData = [float(v) for v in np.asarray(points, dtype=float).ravel()]
    item.GraphicType = graphic_type
    if filled is not None:
        item.GraphicFilled = filled
    return item


def _text(value: str, anchor: np.ndarray | None = None, visible: bool = False,
          box: tuple[np.ndarray, np.ndarray] | None = None) -> Dataset:
    """One Text Object Sequence item (PIXEL units), anchored and/or boxed."""
    item = Dataset()
    if box is not None:
        item.BoundingBoxAnnotationUnits = "PIXEL"
    if anchor is not None:
        item.AnchorPointAnnotationUnits = "PIXEL"
    item.UnformattedTextValue = value
    if box is not None:
        item.BoundingBoxTopLeftHandCorner = [float(v) for v in box[0]]
        item.BoundingBoxBottomRightHandCorner = [float(v) for v in box[1]]
        item.BoundingBoxTextHorizontalJustification = "LEFT"
    if anchor is not None:
        item.AnchorPoint = [float(v) for v in anchor]
        item.AnchorPointVisibility = "Y" if visible else "N"
    return item


def _item(layer: str, graphics: list[Dataset] = (), texts: list[Dataset] = ()) -> Dataset:
    """A Graphic Annotation item (its Referenced Image Sequence is added by ``gsps_dataset``)."""
    item = Dataset()
    item.GraphicLayer = layer
    if texts:
        item.TextObjectSequence = Sequence(list(texts))
    if graphics:
        item.GraphicObjectSequence = Sequence(list(graphics))
    return item


def _box_around(centre: np.ndarray, image: ImageRef, width: float = 48.0,
                height: float = 14.0) -> tuple[np.ndarray, np.ndarray]:
    """A text box of about ``width`` x ``height`` pixels centred on ``centre``, kept in the image."""
    half = np.array([min(width, image.columns / 4), min(height, image.rows / 8)]) / 2
    centre = np.clip(centre, half + 1, np.array([image.columns, image.rows]) - half - 1)
    return centre - half, centre + half


def _px(points: np.ndarray) -> np.ndarray:
    """Voxel indices (pixel centres at integers) -> GSPS PIXEL coordinates (centre at +0.5)."""
    return np.asarray(points, dtype=float) + 0.5


def _length_mm(ends: np.ndarray, image: ImageRef) -> float:
    return float(np.linalg.norm(ends[1] - ends[0]) * image.pixel_spacing)


def agfa_arrow(marks: Marks, image: ImageRef) -> Drawing:
    """Agfa IMPAX: invisible-anchor text at the tip, 2-point shaft, 3-point head (tip in the
    middle)."""
    tip, tail = _px(marks.tip), _px(marks.tail)
    back = (tail - tip) / max(float(np.linalg.norm(tail - tip)), 1e-6)
    head = max(3.0, 4.0 / image.pixel_spacing)
    wings = [tip + head * (np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ back)
             for a in (np.pi / 7, -np.pi / 7)]
    item = _item("CUSTOM",
                 graphics=[_graphic(np.stack([tail, tip]), "POLYLINE"),
                           _graphic(np.stack([wings[0], tip, wings[1]]), "POLYLINE")],
                 texts=[_text("Arrow 1", anchor=tip, visible=False)])
    return Drawing([item], ("CUSTOM",), np.stack([tip, tail]))


def text_anchor_arrow(marks: Marks, image: ImageRef) -> Drawing:
    """Text box at the tail with a visible anchor line to the tip."""
    tip = _px(marks.tip)
    box = _box_around(_px(marks.tail), image)
    tail = (box[0] + box[1]) / 2
    item = _item("ANNOTATION", texts=[_text("Lesion", anchor=tip, visible=True, box=box)])
    return Drawing([item], ("ANNOTATION",), np.stack([tip, tail]))


def compound_arrow(marks: Marks, image: ImageRef) -> Drawing:
    """Compound Graphic of type ARROW (tail, then tip) plus the POLYLINE it is drawn as."""
    tip, tail = _px(marks.tip), _px(marks.tail)
    compound = Dataset()
    compound.CompoundGraphicInstanceID = 1
    compound.CompoundGraphicUnits = "PIXEL"
    compound.GraphicDimensions = 2
    compound.NumberOfGraphicPoints = 2
    compound.GraphicData = [float(v) for v in np.stack([tail, tip]).ravel()]
    compound.CompoundGraphicType = "ARROW"
    line = _graphic(np.stack([tail, tip]), "POLYLINE")
    line.CompoundGraphicInstanceID = 1
    item = _item("ANNOTATION", graphics=[line])
    item.CompoundGraphicSequence = Sequence([compound])
    return Drawing([item], ("ANNOTATION",), np.stack([tip, tail]))


def layer_arrow(marks: Marks, image: ImageRef) -> Drawing:
    """A lone 2-point POLYLINE (tail, then tip) on a layer named ARROW."""
    tip, tail = _px(marks.tip), _px(marks.tail)
    item = _item("ARROW", graphics=[_graphic(np.stack([tail, tip]), "POLYLINE")])
    return Drawing([item], ("ARROW",), np.stack([tip, tail]))


def line_mm(marks: Marks, image: ImageRef) -> Drawing:
    """Caliper: 2-point POLYLINE plus a text "NN.N mm" whose visible anchor is the second end."""
    ends = _px(marks.long_axis)
    length = _length_mm(ends, image)
    box = _box_around(ends[1] + np.array([20.0, -10.0]), image)
    item = _item("MEASUREMENT", graphics=[_graphic(ends, "POLYLINE")],
                 texts=[_text(f"{length:.1f} mm", anchor=ends[1], visible=True, box=box)])
    return Drawing([item], ("MEASUREMENT",), ends, length_mm=length)


def bidirectional(marks: Marks, image: ImageRef) -> Drawing:
    """RECIST long and short axes: two crossing 2-point POLYLINEs in one annotation item."""
    long_ends, short_ends = _px(marks.long_axis), _px(marks.short_axis)
    item = _item("MEASUREMENT", graphics=[_graphic(long_ends, "POLYLINE"),
                                          _graphic(short_ends, "POLYLINE")])
    return Drawing([item], ("MEASUREMENT",), np.concatenate([long_ends, short_ends]),
                   length_mm=_length_mm(long_ends, image))


def display_units(marks: Marks, image: ImageRef) -> Drawing:
    """The long axis in DISPLAY units, relative to a zoomed square displayed area."""
    ends = _px(marks.long_axis)
    centre = ends.mean(axis=0)
    half = int(min(max(float(np.linalg.norm(ends[1] - ends[0])) * 2, 32.0),
                   min(image.rows, image.columns) / 2 - 1))
    tl = np.clip(np.floor(centre).astype(int) - half, 1, None)
    tl = np.minimum(tl, np.array([image.columns, image.rows]) - 2 * half)
    br = tl + 2 * half - 1
    # PIXEL x maps to DISPLAY (x - (TLHC - 1)) / width: TLHC's top-left corner is display (0, 0).
    display = (ends - (tl - 1)) / (br - tl + 1)
    item = _item("MEASUREMENT", graphics=[_graphic(display, "POLYLINE", units="DISPLAY")])
    return Drawing([item], ("MEASUREMENT",), ends,
                   displayed_area=((int(tl[0]), int(tl[1])), (int(br[0]), int(br[1]))),
                   length_mm=_length_mm(ends, image))


def rotated(marks: Marks, image: ImageRef) -> Drawing:
    """The long axis drawn on a view rotated 90 degrees clockwise, saved in DISPLAY units.

    Displayed area = whole image, its corners named as the standard wants after a 90 degree
    rotation (TLHC = the pixel shown top left = (1, rows), BRHC = (columns, 1)); a PIXEL point
    (x, y) appears at rotated-frame position (rows - y, x), so DISPLAY = ((rows - y) / rows,
    x / columns).
    """
    ends = _px(marks.long_axis)
    display = np.stack([(image.rows - ends[:, 1]) / image.rows, ends[:, 0] / image.columns],
                       axis=1)
    item = _item("MEASUREMENT", graphics=[_graphic(display, "POLYLINE", units="DISPLAY")])
    area = ((1, image.rows), (image.columns, 1))
    return Drawing([item], ("MEASUREMENT",), ends, displayed_area=area, rotation=90,
                   length_mm=_length_mm(ends, image))


def _ellipse_axes(marks: Marks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, unit major direction, and the two semi-axes (px) of the lesion's RECIST ellipse."""
    ends = _px(marks.long_axis)
    centre = ends.mean(axis=0)
    major = ends[1] - ends[0]
    semi_major = max(float(np.linalg.norm(major)) / 2, 0.5)
    direction = major / (2 * semi_major) if semi_major > 0.5 else np.array([1.0, 0.0])
    semi_minor = max(float(np.linalg.norm(marks.short_axis[1] - marks.short_axis[0])) / 2, 0.5)
    return centre, direction, np.array([semi_major, semi_minor])


def ellipse(marks: Marks, image: ImageRef) -> Drawing:
    """ELLIPSE: major-axis ends, then minor-axis ends (MedDream style ROI)."""
    centre, u, semi = _ellipse_axes(marks)
    v = np.array([-u[1], u[0]])
    pts = np.stack([centre - semi[0] * u, centre + semi[0] * u,
                    centre - semi[1] * v, centre + semi[1] * v])
    item = _item("ROI", graphics=[_graphic(pts, "ELLIPSE", filled="N")])
    return Drawing([item], ("ROI",), pts)


def circle(marks: Marks, image: ImageRef) -> Drawing:
    """CIRCLE: centre, then a point on the circle (radius = half the long axis)."""
    centre, u, semi = _ellipse_axes(marks)
    pts = np.stack([centre, centre + semi[0] * u])
    item = _item("ROI", graphics=[_graphic(pts, "CIRCLE", filled="N")])
    return Drawing([item], ("ROI",), pts)


ENCODERS: dict[Encoding, Callable[[Marks, ImageRef], Drawing]] = {
    Encoding.AGFA_ARROW: agfa_arrow,
    Encoding.TEXT_ANCHOR_ARROW: text_anchor_arrow,
    Encoding.COMPOUND_ARROW: compound_arrow,
    Encoding.LAYER_ARROW: layer_arrow,
    Encoding.LINE_MM: line_mm,
    Encoding.BIDIRECTIONAL: bidirectional,
    Encoding.DISPLAY_UNITS: display_units,
    Encoding.ROTATED: rotated,
    Encoding.ELLIPSE: ellipse,
    Encoding.CIRCLE: circle,
}


def _ref_image(image: ImageRef) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.sop_class_uid
    ref.ReferencedSOPInstanceUID = image.sop_instance_uid
    return ref


def _presentation(ds: Dataset, drawing: Drawing, image: ImageRef) -> None:
    """Displayed Area, Spatial Transformation, Modality LUT, VOI LUT, Presentation LUT modules."""
    tlhc, brhc = drawing.displayed_area or ((1, 1), (image.columns, image.rows))
    area = Dataset()
    area.ReferencedImageSequence = Sequence([_ref_image(image)])
    area.DisplayedAreaTopLeftHandCorner = list(tlhc)
    area.DisplayedAreaBottomRightHandCorner = list(brhc)
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelSpacing = [f"{image.pixel_spacing:.6g}"] * 2
    ds.DisplayedAreaSelectionSequence = Sequence([area])
    ds.ImageRotation = drawing.rotation
    ds.ImageHorizontalFlip = "N"
    ds.RescaleIntercept = f"{image.rescale_intercept:g}"
    ds.RescaleSlope = f"{image.rescale_slope:g}"
    ds.RescaleType = "HU"
    voi = Dataset()
    voi.ReferencedImageSequence = Sequence([_ref_image(image)])
    voi.WindowCenter = 40
    voi.WindowWidth = 400
    ds.SoftcopyVOILUTSequence = Sequence([voi])
    ds.PresentationLUTShape = "IDENTITY"


# Which (fictional) workstation saved each encoding: vendor-styled ones name their vendor.
_GENERIC_VIEWER = ("SAM2CT SYNTH", "SYNTH VIEWER")
VIEWERS: dict[Encoding, tuple[str, str]] = {
    Encoding.AGFA_ARROW: ("AGFA", "IMPAX AGILITY"),
    Encoding.ELLIPSE: ("Softneta", "MedDream"),
}


@dataclass(frozen=True)
class GspsIdentity:
    """UIDs and numbering of one GSPS instance, and the encoding it holds."""

    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int
    encoding: Encoding

    @property
    def label(self) -> str:
        """Content Label (CS, 16 characters, upper case)."""
        return self.encoding.value.upper().replace("-", "_")[:16]


def gsps_dataset(drawing: Drawing, image: ImageRef, info: StudyInfo,
                 identity: GspsIdentity) -> Dataset:
    """A complete Grayscale Softcopy Presentation State holding ``drawing`` over ``image``."""
    ds = Dataset()
    ds.file_meta = file_meta(GrayscaleSoftcopyPresentationStateStorage,
                              identity.sop_instance_uid)
    patient_study_attributes(ds, info)
    ds.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.InstanceCreationDate = info.study_date
    ds.InstanceCreationTime = info.study_time
    ds.Modality = "PR"
    ds.BodyPartExamined = "CHEST"  # unpaired, so no Laterality
    ds.Manufacturer, ds.ManufacturerModelName = VIEWERS.get(identity.encoding, _GENERIC_VIEWER)
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SeriesNumber = 9001
    ds.SeriesDate = info.study_date
    ds.SeriesTime = info.study_time
    ds.SeriesDescription = "READING ANNOTATIONS"
    ds.InstanceNumber = identity.instance_number
    ds.ContentLabel = identity.label
    ds.ContentDescription = f"synthetic {identity.encoding.value}"
    ds.PresentationCreationDate = info.study_date
    ds.PresentationCreationTime = info.study_time
    ds.ContentCreatorName = "SYNTH^READER"
    series = Dataset()
    series.SeriesInstanceUID = info.series_instance_uid
    series.ReferencedImageSequence = Sequence([_ref_image(image)])
    ds.ReferencedSeriesSequence = Sequence([series])
    _presentation(ds, drawing, image)
    for item in drawing.items:
        item.ReferencedImageSequence = Sequence([_ref_image(image)])
    ds.GraphicAnnotationSequence = Sequence(drawing.items)
    layers = []
    for order, name in enumerate(drawing.layers, start=1):
        layer = Dataset()
        layer.GraphicLayer = name
        layer.GraphicLayerOrder = order
        layer.GraphicLayerDescription = name.lower()
        layers.append(layer)
    ds.GraphicLayerSequence = Sequence(layers)
    return ds
