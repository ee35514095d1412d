"""What a radiologist drew on one image, as read from a GSPS: kinds and the Annotation record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Point = tuple[float, float]


class AnnotationKind(StrEnum):
    """What an annotation is; the values equal ``sam2ct.prompts.PromptKind`` values (plus text).

    Point order per kind: LINE two ends; BIDIRECTIONAL long-axis ends, then short-axis ends;
    ARROW head (tip), then tail; ELLIPSE major-axis ends, then minor-axis ends; CIRCLE centre,
    then a rim point; POLYGON vertices; POINT one point; TEXT its anchor (or none).
    """

    LINE = "line"
    BIDIRECTIONAL = "bidirectional"
    ARROW = "arrow"
    ELLIPSE = "ellipse"
    CIRCLE = "circle"
    POLYGON = "polygon"
    POINT = "point"
    TEXT = "text"


# Number of points each kind must have: (minimum, maximum). The prompt kinds' are those of
# sam2ct.prompts.POINT_COUNTS (a test holds them equal): an annotation that reads well always
# makes a valid prompt. A drawing outside them is skipped with the reason.
POINT_COUNTS: dict[AnnotationKind, tuple[int, int]] = {
    AnnotationKind.LINE: (2, 2),
    AnnotationKind.BIDIRECTIONAL: (4, 4),
    AnnotationKind.ARROW: (2, 2),
    AnnotationKind.ELLIPSE: (4, 4),
    AnnotationKind.CIRCLE: (2, 2),
    AnnotationKind.POLYGON: (3, 100_000),
    AnnotationKind.POINT: (1, 1),
    AnnotationKind.TEXT: (0, 1),
}


@dataclass(frozen=True)
class Annotation:
    """One drawing of a GSPS on one referenced image, in the GSPS PIXEL convention.

    ``points`` are (column, row) floats where (0, 0) is the top-left corner of the top-left pixel
    (a pixel centre is at +0.5), already converted from DISPLAY units when needed. ``index`` is the
    annotation's stable position within its GSPS and, with ``gsps_sop_instance_uid``, its
    identifier. A bad annotation is kept with ``skip_reason`` set instead of raising.

    Example
    -------
    >>> a = Annotation("1.2.3", 0, AnnotationKind.LINE, "1.2.4", None, ((1.0, 2.0), (4.0, 6.0)))
    >>> a.identifier, a.usable
    ('1.2.3#0', True)
    """

    gsps_sop_instance_uid: str
    index: int
    kind: AnnotationKind
    referenced_sop_instance_uid: str | None
    referenced_frame: int | None
    points: tuple[Point, ...]
    length_mm: float | None = None
    text: str = ""
    layer: str = ""
    skip_reason: str | None = None
    referenced_series_instance_uid: str | None = None
    referenced_sop_class_uid: str | None = None
    units_converted_from_display: bool = False
    short_axis_mm: float | None = None  # BIDIRECTIONAL only
    closed: bool = False  # POLYGON: first point equalled the last (the repeat is dropped)
    spacing_source: str | None = None  # which attribute gave the mm: PixelSpacing, ...
    origin: str = field(default="", compare=False)  # which GSPS elements it came from

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AnnotationKind(self.kind))
        points = tuple((float(c), float(r)) for c, r in self.points)
        object.__setattr__(self, "points", points)
        if self.index < 0:
            raise ValueError(f"Invalid 'index' value {self.index} - must be >= 0")
        if self.skip_reason is None:
            low, high = POINT_COUNTS[self.kind]
            if not low <= len(points) <= high:
                raise ValueError(
                    f"Invalid 'points' - a {self.kind.value} needs {low} to {high} points, "
                    f"got {len(points)}"
                )
            if not all(math.isfinite(v) for p in points for v in p):
                raise ValueError("Invalid 'points' - coordinates must be finite")

    @property
    def identifier(self) -> str:
        """``<GSPS SOP Instance UID>#<index>``: ties a prompt or a segment to this annotation."""
        return f"{self.gsps_sop_instance_uid}#{self.index}"

    @property
    def usable(self) -> bool:
        """Whether this annotation can become a prompt: not skipped and not plain text."""
        return self.skip_reason is None and self.kind is not AnnotationKind.TEXT

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (kind as its string value, points as lists)."""
        return {
            "gsps_sop_instance_uid": self.gsps_sop_instance_uid,
            "index": self.index,
            "kind": self.kind.value,
            "referenced_sop_instance_uid": self.referenced_sop_instance_uid,
            "referenced_frame": self.referenced_frame,
            "referenced_series_instance_uid": self.referenced_series_instance_uid,
            "points": [[_json_float(c), _json_float(r)] for c, r in self.points],
            "length_mm": self.length_mm,
            "short_axis_mm": self.short_axis_mm,
            "text": self.text,
            "layer": self.layer,
            "closed": self.closed,
            "units_converted_from_display": self.units_converted_from_display,
            "spacing_source": self.spacing_source,
            "skip_reason": self.skip_reason,
            "origin": self.origin,
        }


def _json_float(value: float) -> float | None:
    """NaN/inf are not JSON: write them as null."""
    return value if math.isfinite(value) else None
