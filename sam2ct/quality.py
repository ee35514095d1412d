"""Automatic quality flags of one segmentation: does the mask agree with what was drawn?

A mask is checked against its prompt with plain geometry (no truth needed):

* ``off-slice``: the mask is not on the slice the prompt was drawn on;
* ``volume``: a line's or bidirectional's volume far from the sphere / ellipsoid of the drawn
  diameters (line: sphere of diameter L; bidirectional: ellipsoid L x S x S);
* ``diameter``: the mask's longest diameter on the drawn slice far from the drawn length;
* ``line-outside``: much of the drawn line (or a bidirectional's lines) lies outside the mask;
* ``arrow-tip``: the mask is far from the arrow's tip, or ``arrow-direction``: it lies off the
  arrow's direction, much of it behind the tip, or it covers the tail (a contour beside the
  lesion, or one leaking back along the arrow);
* ``irregular``: the mask's outline on the drawn slice is far from convex (a leak into
  neighbouring tissue);
* ``open-rim``: much of the tissue just outside the mask (a rim ~2 mm wide) has the mask's own
  density (when the image is given): the mask stops inside homogeneous tissue, short of the lesion's edge, or
  spills over one into a neighbour of the same density;
* ``fov-border``: the mask touches the edge of the image or the first / last slice (cut off,
  or leaking out of the field of view);
* ``z-leak``: the mask runs through many more millimetres of slices than it is wide, or
  ``flat``: far fewer (spread in-plane into neighbours);
* ``model-score``: the model's own confidence, when it gives one, is low.

:func:`quality_evidence` measures the figures once; :meth:`QualityEvidence.flags` applies
:class:`QualityThresholds` to them (calibrated on synthetic studies with truth and LUNG1 by
``bench/quality_flags.py``, which prints how the flags separate Dice < 0.5 from Dice >= 0.7).

Example
-------
>>> flags = quality_flags(mask, (3.0, 0.8, 0.8), prompt, measure_mask(mask, spacing, hu))  # doctest: +SKIP
>>> [(f.code, f.reason) for f in flags]  # doctest: +SKIP
[('volume', 'volume 27.0 mL is 3.1x the sphere of the drawn 26 mm line (0.2-2.5x expected)')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

from sam2ct.geometry import MaskMeasures, longest_chord
from sam2ct.prompts import Prompt, PromptKind

__all__ = ["DEFAULT_THRESHOLDS", "FlagCode", "QualityEvidence", "QualityFlag",
           "QualityThresholds", "quality_evidence", "quality_flags"]


class FlagCode(StrEnum):
    """Short codes of the quality flags (stored in the catalog, filterable)."""

    EMPTY = "empty"
    OFF_SLICE = "off-slice"
    VOLUME = "volume"
    DIAMETER = "diameter"
    LINE_OUTSIDE = "line-outside"
    ARROW_TIP = "arrow-tip"
    ARROW_DIRECTION = "arrow-direction"
    IRREGULAR = "irregular"
    OPEN_RIM = "open-rim"
    FOV_BORDER = "fov-border"
    Z_LEAK = "z-leak"
    FLAT = "flat"
    MODEL_SCORE = "model-score"


@dataclass(frozen=True)
class QualityFlag:
    """One reason to look at a segmentation again: a short code and a sentence with figures."""

    code: FlagCode
    reason: str

    def to_json(self) -> dict[str, str]:
        """``{"code": ..., "reason": ...}`` as the catalog stores it."""
        return {"code": self.code.value, "reason": self.reason}


@dataclass(frozen=True)
class QualityThresholds:
    """Where each figure of :class:`QualityEvidence` becomes a flag (bands are inclusive).

    The defaults were calibrated by ``bench/quality_flags.py`` on 24 synthetic studies (seeds
    101-124, the classical model, 598 masks): the most masks with Dice < 0.5 flagged while at
    most 20 % of those with Dice >= 0.7 are. Checks that flagged nothing more there keep a
    loose value that no good synthetic or LUNG1 mask reached (diameter, arrow tip and
    direction, solidity): they catch gross errors only.
    """

    volume_ratio: tuple[float, float] = (0.15, 2.0)  # mask volume / drawn sphere or ellipsoid
    diameter_ratio: tuple[float, float] = (0.5, 2.0)  # longest chord on the slice / drawn length
    min_line_coverage: float = 0.6  # share of the drawn line(s) inside the mask
    max_tip_distance_mm: float = 10.0  # arrow tip to the nearest mask voxel on its slice
    min_arrow_alignment: float = 0.0  # cosine: arrow direction vs tip -> mask centroid
    max_behind_share: float = 0.5  # share of the mask's slice area behind the arrow's tip
    min_solidity: float = 0.6  # area / convex hull area of the mask on the drawn slice
    max_rim_similarity: float = 0.4  # share of the outer rim within the mask's HU band
    z_ratio: tuple[float, float] = (0.5, 2.0)  # slice extent (mm) / largest in-plane diameter
    min_model_score: float = 0.5  # the model's own score (SAM2CT: not calibrated, no real weights)


DEFAULT_THRESHOLDS = QualityThresholds()

#: below this distance (mm) from the tip the mask's centroid has no direction to check
_ALIGNMENT_MIN_MM = 3.0
#: samples per drawn line when measuring how much of it lies in the mask
_LINE_SAMPLES = 64
#: mask voxels further than this (mm) behind an arrow's tip count as behind it
_BEHIND_MM = 3.0
#: width (mm) of the in-plane rim just outside the mask whose density is compared with it
_RIM_MM = 2.0
#: the mask's density band: these percentiles of its HU
_BAND_PERCENTILES = (10.0, 90.0)


@dataclass(frozen=True, kw_only=True)
class QualityEvidence:
    """The figures the flags are decided on (``None``: does not apply to this prompt kind)."""

    kind: PromptKind
    empty: bool = False
    volume_ml: float = 0.0
    drawn_long_mm: float | None = None
    drawn_short_mm: float | None = None
    expected_ml: float | None = None
    on_prompt_slice: bool = True
    slice_long_mm: float = 0.0
    line_coverage: float | None = None
    tip_distance_mm: float | None = None
    arrow_alignment: float | None = None
    behind_share: float | None = None
    tail_inside: bool | None = None
    solidity: float = 1.0
    rim_similarity: float | None = None
    z_extent_mm: float = 0.0
    long_axis_mm: float = 0.0
    borders: tuple[str, ...] = ()
    model_score: float | None = None

    @property
    def volume_ratio(self) -> float | None:
        """Mask volume over the drawn sphere / ellipsoid (lines and bidirectionals)."""
        return self.volume_ml / self.expected_ml if self.expected_ml else None

    @property
    def diameter_ratio(self) -> float | None:
        """Longest diameter on the drawn slice over the drawn length (lines, bidirectionals)."""
        return self.slice_long_mm / self.drawn_long_mm if self.drawn_long_mm else None

    @property
    def z_ratio(self) -> float:
        """Extent through slices over the largest in-plane diameter."""
        return self.z_extent_mm / self.long_axis_mm if self.long_axis_mm > 0 else math.inf

    def flags(self, t: QualityThresholds = DEFAULT_THRESHOLDS) -> list[QualityFlag]:
        """The flags these figures raise under thresholds ``t`` (empty list: nothing seen)."""
        if self.empty:
            return [QualityFlag(FlagCode.EMPTY, "the mask is empty")]
        found = [*self._prompt_flags(t), *self._shape_flags(t)]
        if self.model_score is not None and self.model_score < t.min_model_score:
            found.append(QualityFlag(FlagCode.MODEL_SCORE, (
                f"the model's own score of the mask is {self.model_score:.2f} "
                f"(at least {t.min_model_score:.2f} expected)")))
        return found

    def _prompt_flags(self, t: QualityThresholds) -> list[QualityFlag]:
        """Flags comparing the mask with the drawing."""
        found = []
        if not self.on_prompt_slice:
            found.append(QualityFlag(FlagCode.OFF_SLICE,
                                     "the mask is not on the slice the prompt was drawn on"))
        ratio, drawn = self.volume_ratio, self.drawn_long_mm
        if ratio is not None and not t.volume_ratio[0] <= ratio <= t.volume_ratio[1]:
            shape = (f"ellipsoid of the drawn {drawn:.0f} x {self.drawn_short_mm:.0f} mm axes"
                     if self.drawn_short_mm else f"sphere of the drawn {drawn:.0f} mm line")
            found.append(QualityFlag(FlagCode.VOLUME, (
                f"volume {self.volume_ml:.1f} mL is {ratio:.2f}x the {shape} "
                f"({self.expected_ml:.1f} mL; {_band(t.volume_ratio)} expected)")))
        ratio = self.diameter_ratio
        if self.on_prompt_slice and ratio is not None and \
                not t.diameter_ratio[0] <= ratio <= t.diameter_ratio[1]:
            found.append(QualityFlag(FlagCode.DIAMETER, (
                f"longest diameter on the drawn slice {self.slice_long_mm:.0f} mm vs the drawn "
                f"{drawn:.0f} mm ({ratio:.2f}x; {_band(t.diameter_ratio)} expected)")))
        if self.line_coverage is not None and self.line_coverage < t.min_line_coverage:
            found.append(QualityFlag(FlagCode.LINE_OUTSIDE, (
                f"only {self.line_coverage:.0%} of the drawn line lies in the mask "
                f"(at least {t.min_line_coverage:.0%} expected)")))
        if self.tip_distance_mm is not None and self.tip_distance_mm > t.max_tip_distance_mm:
            found.append(QualityFlag(FlagCode.ARROW_TIP, (
                f"the mask is {self.tip_distance_mm:.1f} mm from the arrow's tip on its slice "
                f"(at most {t.max_tip_distance_mm:.1f} mm expected)")))
        direction = self._arrow_direction(t)
        if direction:
            found.append(QualityFlag(FlagCode.ARROW_DIRECTION, direction))
        return found

    def _arrow_direction(self, t: QualityThresholds) -> str | None:
        """Why the mask is not what the arrow points at, or None."""
        if self.tail_inside:
            return "the mask covers the arrow's tail, not only what it points at"
        if self.behind_share is not None and self.behind_share > t.max_behind_share:
            return (f"{self.behind_share:.0%} of the mask on the arrow's slice lies behind its tip "
                    f"(at most {t.max_behind_share:.0%} expected)")
        if self.arrow_alignment is not None and self.arrow_alignment < t.min_arrow_alignment:
            angle = math.degrees(math.acos(max(-1.0, min(1.0, self.arrow_alignment))))
            return (f"the mask lies {angle:.0f} deg off the arrow's direction (at most "
                    f"{math.degrees(math.acos(max(-1.0, t.min_arrow_alignment))):.0f} deg "
                    "expected)")
        return None

    def _shape_flags(self, t: QualityThresholds) -> list[QualityFlag]:
        """Flags on the mask's own shape and place in the series."""
        found = []
        if self.borders:
            found.append(QualityFlag(FlagCode.FOV_BORDER, "the mask touches the "
                                     + ", ".join(self.borders) + " of the series"))
        if self.on_prompt_slice and self.solidity < t.min_solidity:
            found.append(QualityFlag(FlagCode.IRREGULAR, (
                f"the mask fills {self.solidity:.0%} of its convex outline on the drawn slice "
                f"(at least {t.min_solidity:.0%} expected)")))
        if self.rim_similarity is not None and self.rim_similarity > t.max_rim_similarity:
            found.append(QualityFlag(FlagCode.OPEN_RIM, (
                f"{self.rim_similarity:.0%} of the tissue just outside the mask has its density "
                f"(at most {t.max_rim_similarity:.0%} expected): it may stop short of the "
                "lesion's edge or run on into a neighbour")))
        low, high = t.z_ratio
        if not low <= self.z_ratio <= high:
            code = FlagCode.Z_LEAK if self.z_ratio > high else FlagCode.FLAT
            found.append(QualityFlag(code, (
                f"the mask runs {self.z_extent_mm:.0f} mm through slices, {self.z_ratio:.2f}x "
                f"its largest in-plane diameter {self.long_axis_mm:.0f} mm "
                f"({_band(t.z_ratio)} expected)")))
        return found


def _band(band: tuple[float, float]) -> str:
    return f"{band[0]:g}-{band[1]:g}x"


def quality_flags(mask: np.ndarray, spacing: tuple[float, float, float], prompt: Prompt,
                  measures: MaskMeasures | None, image: np.ndarray | None = None,
                  model_score: float | None = None,
                  thresholds: QualityThresholds = DEFAULT_THRESHOLDS) -> list[QualityFlag]:
    """The quality flags of ``mask`` made from ``prompt`` (see the module docstring).

    Parameters
    ----------
    mask
        Boolean (slices, rows, columns) mask the model returned.
    spacing
        (slice, row, column) voxel spacing in mm.
    prompt
        The prompt the mask was made from (points in voxels, x = column, y = row).
    measures
        ``sam2ct.geometry.measure_mask`` of the mask; ``None`` for an empty mask.
    image
        The volume in HU (same shape) for the ``open-rim`` check; ``None`` leaves it out.
    model_score
        The model's own confidence in [0, 1], when it gives one.
    thresholds
        Where each figure becomes a flag.
    """
    return quality_evidence(mask, spacing, prompt, measures, image,
                            model_score).flags(thresholds)


def quality_evidence(mask: np.ndarray, spacing: tuple[float, float, float], prompt: Prompt,
                     measures: MaskMeasures | None, image: np.ndarray | None = None,
                     model_score: float | None = None) -> QualityEvidence:
    """The figures :meth:`QualityEvidence.flags` decides on (arguments as :func:`quality_flags`)."""
    kind = PromptKind(prompt.kind)
    if measures is None or not mask.any():
        return QualityEvidence(kind=kind, empty=True, model_score=model_score)
    z = prompt.slice_index
    plane = mask[z] if 0 <= z < mask.shape[0] else np.zeros(mask.shape[1:], dtype=bool)
    in_plane = (float(spacing[1]), float(spacing[2]))
    z0, r0, c0, z1, r1, c1 = measures.bbox
    return QualityEvidence(
        kind=kind, volume_ml=measures.volume_ml, on_prompt_slice=bool(plane.any()),
        slice_long_mm=longest_chord(plane, in_plane).length_mm if plane.any() else 0.0,
        solidity=_solidity(plane),
        rim_similarity=None if image is None else _rim_similarity(mask, image, measures.bbox,
                                                                  in_plane),
        z_extent_mm=(z1 - z0 + 1) * float(spacing[0]), long_axis_mm=measures.long_axis_mm,
        borders=_borders((z0, r0, c0, z1, r1, c1), mask.shape), model_score=model_score,
        **_drawn(prompt, plane, in_plane))


def _drawn(prompt: Prompt, plane: np.ndarray, in_plane: tuple[float, float]) -> dict:
    """The evidence that depends on the drawing: lengths, expected volume, coverage, arrow."""
    rc = prompt.points[:, ::-1]  # (row, column)
    scale = np.asarray(in_plane)
    if prompt.kind is PromptKind.LINE:
        long = _length(rc[0], rc[1], scale)
        return {"drawn_long_mm": long, "expected_ml": math.pi / 6 * long ** 3 / 1000.0,
                "line_coverage": _coverage(plane, [rc[:2]])}
    if prompt.kind is PromptKind.BIDIRECTIONAL:
        long, short = _length(rc[0], rc[1], scale), _length(rc[2], rc[3], scale)
        return {"drawn_long_mm": long, "drawn_short_mm": short,
                "expected_ml": math.pi / 6 * long * short * short / 1000.0,
                "line_coverage": _coverage(plane, [rc[:2], rc[2:]])}
    if prompt.kind is PromptKind.ARROW:
        return _arrow(rc[0], rc[1], plane, scale)
    return {}


def _length(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.linalg.norm((b - a) * scale))


def _coverage(plane: np.ndarray, lines: list[np.ndarray]) -> float:
    """Share of samples along the drawn lines that fall on mask voxels (nearest voxel)."""
    t = np.linspace(0.0, 1.0, _LINE_SAMPLES)[:, None]
    samples = np.concatenate([a + t * (b - a) for a, b in lines])
    idx = np.rint(samples).astype(int)
    inside = ((idx >= 0) & (idx < np.asarray(plane.shape))).all(axis=1)
    hits = np.zeros(len(idx), dtype=bool)
    hits[inside] = plane[idx[inside, 0], idx[inside, 1]]
    return float(hits.mean())


def _arrow(tip: np.ndarray, tail: np.ndarray, plane: np.ndarray, scale: np.ndarray) -> dict:
    """Distance from the tip to the mask, direction of the mask seen from the tip, tail inside."""
    voxels = np.argwhere(plane)
    if len(voxels) == 0:
        return {}
    mm = voxels * scale
    tip_mm = tip * scale
    distance = float(np.sqrt(((mm - tip_mm) ** 2).sum(axis=1).min()))
    direction = (tip - tail) * scale
    offset = mm.mean(axis=0) - tip_mm
    alignment = 1.0
    if np.linalg.norm(direction) > 0 and np.linalg.norm(offset) >= _ALIGNMENT_MIN_MM:
        alignment = float(offset @ direction / np.linalg.norm(offset) / np.linalg.norm(direction))
    behind = 0.0
    if np.linalg.norm(direction) > 0:
        along = (mm - tip_mm) @ (direction / np.linalg.norm(direction))
        behind = float(np.mean(along < -_BEHIND_MM))
    r, c = np.rint(tail).astype(int)
    tail_inside = bool(0 <= r < plane.shape[0] and 0 <= c < plane.shape[1] and plane[r, c])
    return {"tip_distance_mm": round(distance, 2), "arrow_alignment": alignment,
            "behind_share": round(behind, 4), "tail_inside": tail_inside}


def _rim_similarity(mask: np.ndarray, image: np.ndarray, bbox: tuple[int, ...],
                    in_plane: tuple[float, float]) -> float:
    """Share of the in-plane rim just outside the mask (``_RIM_MM`` wide, at least a voxel)
    whose HU lies in the mask's own band (``_BAND_PERCENTILES`` of its HU), on its slices."""
    z0, r0, c0, z1, r1, c1 = bbox
    radius = max(_RIM_MM, *in_plane)
    reach = [int(math.ceil(radius / s)) for s in in_plane]
    box = (slice(z0, z1 + 1), slice(max(r0 - reach[0], 0), r1 + reach[0] + 1),
           slice(max(c0 - reach[1], 0), c1 + reach[1] + 1))
    inside, hu = mask[box], image[box]
    rows, cols = np.ogrid[-reach[0]:reach[0] + 1, -reach[1]:reach[1] + 1]
    disc = (rows * in_plane[0]) ** 2 + (cols * in_plane[1]) ** 2 <= radius ** 2 + 1e-6
    rim = ndimage.binary_dilation(inside, structure=disc[None]) & ~inside
    if not rim.any():
        return 0.0
    low, high = np.percentile(hu[inside], _BAND_PERCENTILES)
    values = hu[rim]
    return float(np.mean((values >= low) & (values <= high)))


def _solidity(plane: np.ndarray) -> float:
    """Area over convex hull area of the mask on one slice (1.0 when it is not there)."""
    if not plane.any():
        return 1.0
    return float(regionprops(plane.astype(np.uint8))[0].solidity)


def _borders(bbox: tuple[int, ...], shape: tuple[int, ...]) -> tuple[str, ...]:
    """Which edges of the series the bounding box touches, named for a reader."""
    z0, r0, c0, z1, r1, c1 = bbox
    named = [(z0 == 0, "first slice"), (z1 == shape[0] - 1, "last slice"),
             (r0 == 0 or r1 == shape[1] - 1, "top or bottom image edge"),
             (c0 == 0 or c1 == shape[2] - 1, "left or right image edge")]
    return tuple(name for touched, name in named if touched)
