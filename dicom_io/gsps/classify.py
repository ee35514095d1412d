"""Group the graphic, text and compound objects of one Graphic Annotation item into drawings.

Rules follow ../shared/docs/gsps-encodings.md, applied in this order so that each object is used
once: compound ARROW / RULER; the Agfa three-part arrow (2-point shaft + 3-point head whose middle
point is the tip); two crossing 2-point POLYLINEs (bidirectional); single graphics (a 2-point
POLYLINE is a line, or an arrow on a layer named like "arrow"); then text objects, which either
label a drawing (anchor on it, or the item's only drawing) or, with a visible anchor free of any
drawing, are an arrow from the text box centre to the anchor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from dicom_io.gsps.annotation import AnnotationKind

# An anchor this close (PIXEL units) to a drawing labels it; ends this close are the same point.
ATTACH_TOLERANCE_PX = 1.0
# First and last points of a POLYLINE this close make it closed.
CLOSED_TOLERANCE_PX = 0.01


class GraphicType(StrEnum):
    """Graphic Type (0070,0023) values."""

    POINT = "POINT"
    POLYLINE = "POLYLINE"
    INTERPOLATED = "INTERPOLATED"
    CIRCLE = "CIRCLE"
    ELLIPSE = "ELLIPSE"


class CompoundType(StrEnum):
    """Compound Graphic Type (0070,0294) values we turn into drawings (others are ignored)."""

    ARROW = "ARROW"
    RULER = "RULER"


@dataclass(frozen=True)
class Graphic:
    """One Graphic Object, its points already in PIXEL units (or ``problem`` says why not)."""

    index: int
    graphic_type: str
    points: np.ndarray
    compound_id: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class TextObject:
    """One Text Object; anchor and box corners in PIXEL units when present."""

    index: int
    value: str
    anchor: np.ndarray | None = None
    anchor_visible: bool = False
    box: tuple[np.ndarray, np.ndarray] | None = None
    compound_id: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Compound:
    """One Compound Graphic item (type and points in PIXEL units)."""

    index: int
    compound_type: str
    points: np.ndarray
    compound_id: int | None = None
    problem: str | None = None


@dataclass
class Drawing:
    """A classified drawing of one item, before it becomes an ``Annotation``."""

    kind: AnnotationKind
    points: np.ndarray
    origin: str
    order: tuple[int, int]  # (object family, index): sorts drawings in a stable order
    skip_reason: str | None = None
    closed: bool = False
    texts: list[str] = field(default_factory=list)
    from_display: bool = False  # set by the reader: the item's points were in DISPLAY units


def classify_item(
    graphics: list[Graphic], texts: list[TextObject], compounds: list[Compound], layer: str
) -> list[Drawing]:
    """The drawings of one Graphic Annotation item, in a stable order."""
    used_g: set[int] = set()
    used_t: set[int] = set()
    drawings = _compounds(compounds, graphics, texts, used_g, used_t)
    drawings += _agfa_arrows(graphics, texts, used_g, used_t)
    drawings += _bidirectionals(graphics, layer, used_g)
    drawings += [_single(g, layer) for g in graphics if g.index not in used_g]
    drawings.sort(key=lambda d: d.order)
    drawings += _texts(texts, drawings, used_t)
    return drawings


# ----------------------------------------------------------------------------------------------
# Compound graphics and the Agfa arrow
# ----------------------------------------------------------------------------------------------


def _compounds(
    compounds: list[Compound],
    graphics: list[Graphic],
    texts: list[TextObject],
    used_g: set[int],
    used_t: set[int],
) -> list[Drawing]:
    """Compound ARROW (points tail, tip) and RULER (two ends); their rendered parts are consumed."""
    out = []
    for c in compounds:
        if c.compound_type not in (CompoundType.ARROW.value, CompoundType.RULER.value):
            continue
        kind = AnnotationKind.ARROW if c.compound_type == "ARROW" else AnnotationKind.LINE
        origin = f"compound graphic {c.index + 1} ({c.compound_type})"
        problem = c.problem or _point_problem(c.points, 2, 2, f"compound {c.compound_type}")
        points = c.points[::-1] if kind is AnnotationKind.ARROW and problem is None else c.points
        drawing = Drawing(kind, points, origin, (0, c.index), skip_reason=problem)
        if c.compound_id is not None:
            for g in graphics:
                if g.compound_id == c.compound_id:
                    used_g.add(g.index)
            for t in texts:
                if t.compound_id == c.compound_id and t.index not in used_t:
                    used_t.add(t.index)
                    drawing.texts.append(t.value)
        out.append(drawing)
    return out


def _usable_polyline(g: Graphic, n: int) -> bool:
    return g.problem is None and g.graphic_type == "POLYLINE" and len(g.points) == n


def _agfa_arrows(
    graphics: list[Graphic], texts: list[TextObject], used_g: set[int], used_t: set[int]
) -> list[Drawing]:
    """Agfa IMPAX arrows: 3-point head (middle point = tip) + 2-point shaft ending at the tip."""
    out = []
    heads = [g for g in graphics if g.index not in used_g and _usable_polyline(g, 3)]
    for head in heads:
        if _is_closed(head.points):
            continue
        tip = head.points[1]
        for shaft in graphics:
            if shaft.index in used_g or not _usable_polyline(shaft, 2):
                continue
            ends = np.linalg.norm(shaft.points - tip, axis=1)
            if ends.min() > ATTACH_TOLERANCE_PX:
                continue
            tail = shaft.points[int(np.argmax(ends))]
            used_g.update((head.index, shaft.index))
            origin = f"graphics {shaft.index + 1}+{head.index + 1} (shaft + head)"
            drawing = Drawing(AnnotationKind.ARROW, np.stack([tip, tail]), origin,
                              (1, min(head.index, shaft.index)))
            for t in texts:
                if t.index in used_t or t.anchor is None or t.problem:
                    continue
                if np.linalg.norm(t.anchor - tip) <= ATTACH_TOLERANCE_PX:
                    used_t.add(t.index)
                    drawing.texts.append(t.value)
            out.append(drawing)
            break
    return out


# ----------------------------------------------------------------------------------------------
# Bidirectional, single graphics
# ----------------------------------------------------------------------------------------------


def _segments_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Shortest distance between segments a=(2,2) and b=(2,2) (0 when they cross)."""
    if _segments_cross(a, b):
        return 0.0
    return min(
        _point_segment_distance(a[0], b), _point_segment_distance(a[1], b),
        _point_segment_distance(b[0], a), _point_segment_distance(b[1], a),
    )


def _segments_cross(a: np.ndarray, b: np.ndarray) -> bool:
    def side(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    d1, d2 = side(b[0], b[1], a[0]), side(b[0], b[1], a[1])
    d3, d4 = side(a[0], a[1], b[0]), side(a[0], a[1], b[1])
    return d1 * d2 < 0 and d3 * d4 < 0


def _point_segment_distance(p: np.ndarray, seg: np.ndarray) -> float:
    """Distance from point p to segment seg (2, 2)."""
    d = seg[1] - seg[0]
    denom = float(d @ d)
    t = 0.0 if denom == 0 else float(np.clip((p - seg[0]) @ d / denom, 0.0, 1.0))
    return float(np.linalg.norm(p - (seg[0] + t * d)))


def _is_arrow_layer(layer: str) -> bool:
    return "ARROW" in layer.upper()


def _bidirectionals(graphics: list[Graphic], layer: str, used_g: set[int]) -> list[Drawing]:
    """Pairs of crossing (or touching) 2-point POLYLINEs: long-axis ends, then short-axis ends."""
    if _is_arrow_layer(layer):
        return []
    lines = [g for g in graphics if g.index not in used_g and _usable_polyline(g, 2)]
    out = []
    for i, a in enumerate(lines):
        if a.index in used_g:
            continue
        for b in lines[i + 1:]:
            if b.index in used_g:
                continue
            if _segments_distance(a.points, b.points) > ATTACH_TOLERANCE_PX:
                continue
            long, short = sorted((a, b), key=lambda g: -_polyline_length(g.points))
            used_g.update((a.index, b.index))
            origin = f"graphics {long.index + 1}+{short.index + 1} (long + short axis)"
            out.append(Drawing(AnnotationKind.BIDIRECTIONAL,
                               np.concatenate([long.points, short.points]), origin,
                               (1, min(a.index, b.index))))
            break
    return out


def _polyline_length(points: np.ndarray) -> float:
    return float(np.sum(np.linalg.norm(np.diff(points, axis=0), axis=1)))


def _is_closed(points: np.ndarray) -> bool:
    return len(points) >= 4 and float(np.linalg.norm(points[0] - points[-1])) <= CLOSED_TOLERANCE_PX


def _guess_kind(graphic_type: str, n: int) -> AnnotationKind:
    """The kind a graphic would have had, for a skipped one."""
    return {
        "POINT": AnnotationKind.POINT,
        "CIRCLE": AnnotationKind.CIRCLE,
        "ELLIPSE": AnnotationKind.ELLIPSE,
    }.get(graphic_type, AnnotationKind.LINE if n <= 2 else AnnotationKind.POLYGON)


def _point_problem(points: np.ndarray, low: int, high: int, what: str) -> str | None:
    """Why these points cannot make a ``what`` (count, NaN), or None."""
    if not low <= len(points) <= high:
        want = str(low) if low == high else f"{low} or more"
        return f"{what} with {len(points)} point(s), needs {want}"
    if not np.all(np.isfinite(points)):
        return f"{what} has NaN or infinite coordinates"
    return None


_COUNTS = {"POINT": (1, 1), "CIRCLE": (2, 2), "ELLIPSE": (4, 4),
           "POLYLINE": (2, 10**6), "INTERPOLATED": (2, 10**6)}


def _single(g: Graphic, layer: str) -> Drawing:
    """One graphic on its own: point, circle, ellipse, line / layer arrow, polygon."""
    origin = f"graphic {g.index + 1} ({g.graphic_type})"
    kind = _guess_kind(g.graphic_type, len(g.points))
    order = (1, g.index)
    if g.graphic_type not in _COUNTS:
        return Drawing(kind, g.points, origin, order,
                       skip_reason=g.problem or f"unknown Graphic Type '{g.graphic_type}'")
    problem = g.problem or _point_problem(g.points, *_COUNTS[g.graphic_type], g.graphic_type)
    if problem:
        return Drawing(kind, g.points, origin, order, skip_reason=problem)
    if kind is AnnotationKind.CIRCLE and np.allclose(g.points[0], g.points[1]):
        return Drawing(kind, g.points, origin, order, skip_reason="CIRCLE with zero radius")
    if kind is AnnotationKind.LINE:
        if _is_arrow_layer(layer):
            # A lone line on an arrow layer is drawn tail -> tip: report tip first.
            return Drawing(AnnotationKind.ARROW, g.points[::-1], origin, order)
        if np.allclose(g.points[0], g.points[1]):
            return Drawing(kind, g.points, origin, order, skip_reason="line of zero length")
        return Drawing(kind, g.points, origin, order)
    if kind is AnnotationKind.POLYGON:
        return _polygon(g, origin, order)
    return Drawing(kind, g.points, origin, order)


def _polygon(g: Graphic, origin: str, order: tuple[int, int]) -> Drawing:
    """A closed (or open freehand) outline; an open 3-point POLYLINE is not a region."""
    closed = _is_closed(g.points)
    points = g.points[:-1] if closed else g.points
    if not closed and g.graphic_type == "POLYLINE" and len(points) == 3:
        return Drawing(AnnotationKind.POLYGON, points, origin, order, skip_reason=(
            "open 3-point POLYLINE (an angle measurement or an arrow head without shaft), "
            "not a region"))
    if len(np.unique(np.round(points, 3), axis=0)) < 3:
        return Drawing(AnnotationKind.POLYGON, points, origin, order, closed=closed,
                       skip_reason="outline with fewer than 3 distinct points")
    return Drawing(AnnotationKind.POLYGON, points, origin, order, closed=closed)


# ----------------------------------------------------------------------------------------------
# Text objects: labels, text-anchor arrows, plain texts
# ----------------------------------------------------------------------------------------------


def _distance_to_drawing(p: np.ndarray, d: Drawing) -> float:
    """Distance from a point to a drawing's outline (segments between consecutive points)."""
    pts = d.points
    if len(pts) == 0 or not np.all(np.isfinite(pts)):
        return float("inf")
    if d.kind in (AnnotationKind.ELLIPSE, AnnotationKind.CIRCLE, AnnotationKind.POINT):
        return float(np.min(np.linalg.norm(pts - p, axis=1)))
    if len(pts) == 1:
        return float(np.linalg.norm(pts[0] - p))
    if d.kind is AnnotationKind.BIDIRECTIONAL:
        starts, ends = pts[[0, 2]], pts[[1, 3]]
    else:
        closing = d.kind is AnnotationKind.POLYGON and d.closed
        starts = pts if closing else pts[:-1]
        ends = np.roll(pts, -1, axis=0) if closing else pts[1:]
    return _points_segments_distance(p, starts, ends)


def _points_segments_distance(p: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    """Shortest distance from point p to the segments starts[i] -> ends[i] (vectorised)."""
    d = ends - starts
    length2 = np.einsum("ij,ij->i", d, d)
    t = np.einsum("ij,ij->i", p - starts, d) / np.where(length2 == 0, 1.0, length2)
    nearest = starts + np.clip(t, 0.0, 1.0)[:, None] * d
    return float(np.min(np.linalg.norm(nearest - p, axis=1)))


def _texts(texts: list[TextObject], drawings: list[Drawing], used_t: set[int]) -> list[Drawing]:
    """Attach labels to drawings; make arrows of free visible anchors, TEXT of the rest."""
    out = []
    for t in texts:
        if t.index in used_t:
            continue
        target = _label_target(t, drawings)
        if target is not None:
            target.texts.append(t.value)
            continue
        out.append(_free_text(t))
    return out


def _label_target(t: TextObject, drawings: list[Drawing]) -> Drawing | None:
    """The drawing a text labels: anchored on it, else the item's only drawing (unless the
    text's visible anchor points elsewhere, which makes it an arrow)."""
    if t.problem or not drawings:
        return None
    if t.anchor is not None:
        dist = [_distance_to_drawing(t.anchor, d) for d in drawings]
        best = int(np.argmin(dist))
        if dist[best] <= ATTACH_TOLERANCE_PX:
            return drawings[best]
        if t.anchor_visible:
            return None
    return drawings[0] if len(drawings) == 1 else None


def _free_text(t: TextObject) -> Drawing:
    """A text not labelling a drawing: an arrow when its anchor is visible, else plain text."""
    origin = f"text {t.index + 1}"
    order = (2, t.index)
    if t.problem:
        return Drawing(AnnotationKind.TEXT, np.empty((0, 2)), origin, order,
                       skip_reason=t.problem, texts=[t.value])
    if t.anchor is None:
        return Drawing(AnnotationKind.TEXT, np.empty((0, 2)), origin, order, texts=[t.value])
    if not t.anchor_visible:
        return Drawing(AnnotationKind.TEXT, t.anchor[None, :], origin, order, texts=[t.value])
    origin += " (visible anchor)"
    if t.box is None:
        return Drawing(AnnotationKind.ARROW, t.anchor[None, :], origin, order, texts=[t.value],
                       skip_reason="text with a visible anchor but no bounding box: no tail")
    tail = (t.box[0] + t.box[1]) / 2
    if np.linalg.norm(tail - t.anchor) <= ATTACH_TOLERANCE_PX:
        return Drawing(AnnotationKind.ARROW, np.stack([t.anchor, tail]), origin, order,
                       texts=[t.value], skip_reason="text anchor inside its own box: no direction")
    return Drawing(AnnotationKind.ARROW, np.stack([t.anchor, tail]), origin, order,
                   texts=[t.value])
