"""GSPS geometry: DISPLAY -> PIXEL units (displayed area, rotation, flip) and lengths in mm.

PIXEL: (0, 0) is the top-left corner of the top-left pixel. DISPLAY: [0, 1] relative to the
displayed area after the spatial transformation. Per PS3.3 C.10.6 the image is rotated clockwise
first and flipped horizontally after, so we undo the flip first, then the rotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_io.checks import finite_int

#: A pixel spacing above this (mm) is no image's: treated as absent.
MAX_SPACING_MM = 1000.0


class Units(StrEnum):
    """Graphic / Bounding Box / Anchor Point Annotation Units."""

    PIXEL = "PIXEL"
    DISPLAY = "DISPLAY"
    MATRIX = "MATRIX"


@dataclass(frozen=True)
class DisplayedArea:
    """One Displayed Area Selection item: TLHC/BRHC as 1-based (column, row) pixel indices."""

    tlhc: tuple[int, int]
    brhc: tuple[int, int]
    size_mode: str = "SCALE TO FIT"
    presentation_pixel_spacing: tuple[float, float] | None = None  # (row, column) mm

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The area as PIXEL corners: (left, top) and (right, bottom), whatever the corner order."""
        lo = np.minimum(self.tlhc, self.brhc).astype(float) - 1.0
        hi = np.maximum(self.tlhc, self.brhc).astype(float)
        return lo, hi


@dataclass(frozen=True)
class SpatialTransform:
    """Image Rotation (clockwise degrees: 0, 90, 180, 270) and Image Horizontal Flip."""

    rotation: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(
                f"Invalid 'ImageRotation' value {self.rotation} - must be 0, 90, 180 or 270"
            )


def spatial_transform(ds: Dataset) -> SpatialTransform:
    """The GSPS's Spatial Transformation module (identity when absent)."""
    rotation = finite_int(ds.get("ImageRotation", 0) or 0, "ImageRotation") % 360
    flip = str(ds.get("ImageHorizontalFlip", "N") or "N").upper() == "Y"
    return SpatialTransform(rotation, flip)


def _applies_to(item: Dataset, sop_uid: str | None, frame: int | None) -> bool:
    """Whether an item with an optional Referenced Image Sequence applies to this image/frame."""
    refs = item.get("ReferencedImageSequence")
    if not refs:
        return True
    for ref in refs:
        if str(ref.get("ReferencedSOPInstanceUID", "")) != sop_uid:
            continue
        frames = frame_numbers(ref)
        if not frames or frame is None or frame in frames:
            return True
    return False


def frame_numbers(ref: Dataset) -> list[int]:
    """The Referenced Frame Number(s) of a reference item, as ints (empty when absent)."""
    value = ref.get("ReferencedFrameNumber")
    if value is None or value == "":
        return []
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [finite_int(v, "ReferencedFrameNumber") for v in values]


def displayed_area(ds: Dataset, sop_uid: str | None, frame: int | None) -> DisplayedArea | None:
    """The Displayed Area Selection item that applies to an image (None when there is none)."""
    for item in ds.get("DisplayedAreaSelectionSequence", []):
        if not _applies_to(item, sop_uid, frame):
            continue
        tlhc, brhc = item.get("DisplayedAreaTopLeftHandCorner"), item.get(
            "DisplayedAreaBottomRightHandCorner"
        )
        if not tlhc or not brhc or len(tlhc) != 2 or len(brhc) != 2:
            return None
        spacing = item.get("PresentationPixelSpacing")
        return DisplayedArea(
            tlhc=tuple(finite_int(v, "DisplayedAreaTopLeftHandCorner") for v in tlhc),
            brhc=tuple(finite_int(v, "DisplayedAreaBottomRightHandCorner") for v in brhc),
            size_mode=str(item.get("PresentationSizeMode", "") or ""),
            presentation_pixel_spacing=_spacing_pair(spacing),
        )
    return None


def display_to_pixel(
    points: np.ndarray, area: DisplayedArea, transform: SpatialTransform
) -> np.ndarray:
    """DISPLAY (N, 2) points in [0, 1] -> PIXEL (column, row) of the referenced image.

    Example
    -------
    The centre of a 100 x 50 area seen rotated 90 degrees; then its top-left display corner,
    which shows the area's bottom-left pixel corner:

    >>> area = DisplayedArea((1, 1), (100, 50))
    >>> display_to_pixel(np.array([[0.5, 0.5], [0.0, 0.0]]), area, SpatialTransform(90)).tolist()
    [[50.0, 25.0], [0.0, 50.0]]
    """
    lo, hi = area.box()
    width, height = hi - lo
    # Size of the area as seen on the display, after the rotation.
    shown = (height, width) if transform.rotation in (90, 270) else (width, height)
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    a = pts[:, 0] * shown[0]
    b = pts[:, 1] * shown[1]
    if transform.flip:
        a = shown[0] - a
    if transform.rotation == 90:
        x, y = b, height - a
    elif transform.rotation == 180:
        x, y = width - a, height - b
    elif transform.rotation == 270:
        x, y = width - b, a
    else:
        x, y = a, b
    return np.stack([x + lo[0], y + lo[1]], axis=1)


def pixel_spacing(
    image: Dataset | None, area: DisplayedArea | None
) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel and where it came from.

    The image's PixelSpacing (or its functional groups' Pixel Measures) first, then the
    GSPS's PresentationPixelSpacing, then the image's ImagerPixelSpacing (detector plane).
    """
    candidates: list[tuple[object, str]] = []
    if image is not None:
        candidates.append((image.get("PixelSpacing"), "PixelSpacing"))
        candidates.append((_functional_group_spacing(image), "PixelMeasuresSequence"))
    if area is not None:
        candidates.append((area.presentation_pixel_spacing, "PresentationPixelSpacing"))
    if image is not None:
        candidates.append((image.get("ImagerPixelSpacing"), "ImagerPixelSpacing"))
    for value, name in candidates:
        spacing = _spacing_pair(value)
        if spacing is not None:
            return spacing, name
    return None, None


def _functional_group_spacing(image: Dataset) -> object:
    """PixelSpacing of the shared (else first per-frame) Pixel Measures of a multi-frame image."""
    for holder in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = image.get(holder)
        if items and items[0].get("PixelMeasuresSequence"):
            return items[0].PixelMeasuresSequence[0].get("PixelSpacing")
    return None


def _spacing_pair(value: object) -> tuple[float, float] | None:
    """A valid positive (row, column) spacing, at most ``MAX_SPACING_MM``, or None."""
    try:
        row, col = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (0 < row <= MAX_SPACING_MM and 0 < col <= MAX_SPACING_MM):
        return None  # also NaN and infinity
    return row, col


def length_mm(p0: np.ndarray, p1: np.ndarray, spacing: tuple[float, float]) -> float:
    """Distance in mm between two (column, row) points given (row, column) spacing."""
    d = np.asarray(p1, dtype=float) - np.asarray(p0, dtype=float)
    return float(np.hypot(d[0] * spacing[1], d[1] * spacing[0]))
