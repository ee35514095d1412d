"""The classical 3D lesion segmenter: no weights, no GPU, the embedded default (model ``classical``).

From one prompt on one slice to a 3D mask, in a crop around the prompt:

1. the prompt's geometry: centre, long-axis length and direction, short axis (measured for a
   bidirectional or ellipse; for an arrow, from the lesion-like region beyond its tip, away
   from the tail, and when that region runs into same-density neighbours, from the scale at
   which it is most compact and most on real edges; a point assumes ``default_size_mm``);
2. an intensity model (median and robust spread of HU) from the voxels the prompt covers;
3. a crop around the prompt, down-sampled in-plane to about 30 voxels across the lesion;
4. a seed on the prompt slice: in-band voxels inside the 2D ellipse prior from the diameters,
   the component under the prompt, eroded;
5. a 3D random walker (scikit-image) on two channels (HU, and the denoised distance to the
   lesion's HU, for low-contrast edges) with that seed as foreground and air, bone and
   everything outside an ellipsoid sized from the diameters as background;
6. slice-by-slice propagation from the prompt slice (each slice limited to the previous
   slice's mask, dilated) that stops where the region collapses, cuts a slice back where it
   suddenly grows (a leak), then back to the native grid with air trimmed and holes filled.

Deterministic: the same inputs give the same mask.

Example
-------
>>> seg = ClassicalSegmenter()
>>> [mask] = seg.segment(hu, (3.0, 0.98, 0.98), [line_prompt])  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import median_abs_deviation
from skimage.draw import polygon as fill_polygon
from skimage.measure import regionprops
from skimage.morphology import disk, remove_small_holes
from skimage.segmentation import random_walker
from skimage.transform import downscale_local_mean

from sam2ct.geometry import largest_component, longest_chord
from sam2ct.prompts import Prompt, PromptKind

__all__ = ["ClassicalParams", "ClassicalSegmenter"]


@dataclass(frozen=True)
class ClassicalParams:
    """Tuning constants of the classical segmenter (mm and HU unless said otherwise)."""

    crop_factor: float = 0.85  # crop half-size, in-plane, as a fraction of the long axis
    crop_margin_mm: float = 12.0
    z_factor: float = 0.65  # ellipsoid half-height as a fraction of the long axis
    inplane_factor: float = 0.58  # ellipsoid in-plane radius as a fraction of the long axis
    band_sigmas: float = 2.5  # intensity band half-width, in robust standard deviations
    min_sigma_hu: float = 10.0
    min_band_hu: float = 30.0
    air_hu: float = -600.0  # at or below: background (lung, air, fat is above this)
    bone_hu: float = 300.0  # at or above: background unless the lesion itself is that dense
    seed_erosion_mm: float = 2.0
    rw_beta: float = 4.0  # edge weight exp(-beta * (dHU / rw_scale_hu)^2)
    rw_scale_hu: float = 100.0
    rw_voxels_per_diameter: float = 30.0  # in-plane down-sampling for the random walker
    denoise_voxels: float = 0.7  # in-plane Gaussian (working-grid voxels) for band and contrast
    rw_contrast_weight: float = 2.0  # second channel: |HU - lesion| in bands, capped at 1
    rw_tol: float = 1e-2  # conjugate-gradient tolerance of the random walker
    leak_growth: float = 1.6  # a slice larger than this times the previous one is a leak
    step_dilation_mm: float = 4.0  # how far a slice may extend beyond the previous one
    min_slice_fraction: float = 0.02  # smaller than this fraction of the prompt slice: collapsed
    arrow_sample_mm: float = 15.0  # intensity sampled this far beyond an arrow's tip
    arrow_entry_mm: float = 10.0  # the lesion must start within this distance of the tip
    smooth_mm: float = 1.0  # Gaussian smoothing before measuring an arrowed lesion
    min_contrast_hu: float = 10.0
    tissue_hu: float = -300.0  # above: soft tissue (used to skip a ground-glass rim at the tip)
    arrow_max_mm: float = 120.0  # longest lesion extent searched along an arrow
    arrow_fan_deg: float = 40.0  # half-angle of the fan of rays measuring an arrowed lesion
    arrow_core_mm: float = 15.0  # longest stretch of the shaft's continuation used as seed
    arrow_exit_percentile: float = 50.0  # which of the fan's exit distances is the extent
    arrow_opening_mm: float = 3.0  # opening radius cutting the lesion off same-density neighbours
    arrow_leak_max_mm: float = 40.0  # extent at most this when the tip's region leaked and the
    # tip shows no edge (the tail side within ``2 * min_contrast_hu`` of the lesion)
    arrow_max_hole_mm: float = 60.0  # holes up to this area (a square of this side) are filled:
    # a cavity, not the lung ringed by a chest wall of the lesion's density
    arrow_region_ratio: float = 1.6  # region chord / fan extent above which the region leaked
    arrow_min_band_hu: float = 60.0  # arrowed lesions: wider band (rims, cavities) unless the
    # tail side of the tip shows a lower contrast
    arrow_min_plausible_mm: float = 10.0  # a narrower-band arrow lesion this small: retry wide
    arrow_scales: int = 9  # diameters tried (geometric, 2 * min_size_mm to the cap) when the
    # tip's region leaked (see ``_arrow_scale``)
    arrow_scale_tolerance: float = 0.05  # the smallest diameter scoring this near the best wins
    arrow_scale_max_cut: float = 0.3  # at most this share of its outline cut by the disc
    min_size_mm: float = 5.0  # smallest lesion diameter assumed
    default_size_mm: float = 30.0  # assumed diameter when a prompt gives none (point)


@dataclass(frozen=True)
class _Geometry:
    """What a prompt says about the lesion on its slice (row, column voxel coordinates)."""

    centre: np.ndarray
    axis: np.ndarray  # unit vector of the long axis in (row, column) mm space
    long_mm: float
    short_mm: float | None  # None: unknown, estimate from the image
    core: np.ndarray  # (N, 2) voxels sure to be lesion: intensity sample and seed core
    region: np.ndarray | None = None  # an outline the user drew (polygon), full-slice bool


class ClassicalSegmenter:
    """Prompted 3D lesion segmentation with scikit-image / SciPy filters (see module docstring)."""

    name = "classical"
    version = "1.2.0"  # 1.1: arrows no longer fill the lung a chest wall rings; 1.2: an arrow's
    # lesion that touches same-density tissue is sized by scale selection, not a capped fan
    checkpoint_sha256: str | None = None

    def __init__(self, params: ClassicalParams | None = None) -> None:
        self.params = params or ClassicalParams()

    def segment(self, volume: np.ndarray, spacing: tuple[float, float, float],
                prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """One boolean mask of ``volume``'s shape per prompt (volume in HU, spacing in mm)."""
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"Invalid 'volume' shape {volume.shape} - expected (slices, rows, cols)")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"Invalid 'spacing' {spacing} - three positive sizes in mm")
        return [self.segment_one(volume, spacing, p) for p in prompts]

    def segment_one(self, volume: np.ndarray, spacing: tuple[float, float, float],
                    prompt: Prompt) -> np.ndarray:
        """The 3D mask for one prompt."""
        if not 0 <= prompt.slice_index < volume.shape[0]:
            raise ValueError(f"Invalid prompt '{prompt.identifier}' - slice {prompt.slice_index} "
                             f"outside the volume's {volume.shape[0]} slices")
        p = self.params
        geom = _geometry(prompt, volume[prompt.slice_index], spacing[1:], p)
        f = _factor(geom.long_mm, spacing, p)
        box = _crop_box(geom, prompt.slice_index, volume.shape, spacing, f, p)
        local = _shift(geom, np.array([box[1].start, box[2].start], dtype=float), box)
        full = volume[box].astype(np.float32)
        z0 = prompt.slice_index - box[0].start
        mu, sigma = _intensity(full[z0], local.core, p)
        small, coarse = _downscale(full, local, f)
        # in-plane only (slices are often thicker than pixels); for low-contrast boundaries
        smooth = ndimage.gaussian_filter(small, (0.0, p.denoise_voxels, p.denoise_voxels))
        grid = (spacing[0], spacing[1] * f, spacing[2] * f)
        inside = _ellipsoid(small.shape, z0, coarse, grid, p)
        seed = _prompt_region(smooth[z0], coarse, mu, sigma, grid[1:], p)
        labels = _labels(small, z0, seed, inside, mu, sigma, p)
        mask = _propagate(_random_walk(small, smooth, labels, grid, mu, sigma, p), z0, seed, grid, p)
        out = np.zeros(volume.shape, dtype=bool)
        out[box] = _upscale(mask, full, f, mu, sigma, p)
        return out


def _factor(long_mm: float, spacing: tuple[float, float, float], p: ClassicalParams) -> int:
    """In-plane down-sampling factor: about ``rw_voxels_per_diameter`` voxels across the lesion."""
    return max(1, int(long_mm / (p.rw_voxels_per_diameter * min(spacing[1:]))))


def _downscale(full: np.ndarray, geom: _Geometry, f: int) -> tuple[np.ndarray, _Geometry]:
    """Block-mean the crop in-plane by ``f`` and express the prompt geometry on that grid."""
    if f == 1:
        return full, geom
    small = downscale_local_mean(full, (1, f, f))
    core = np.unique(geom.core // f, axis=0)
    region = None
    if geom.region is not None:
        region = downscale_local_mean(geom.region.astype(np.float32), (f, f)) >= 0.5
    centre = (geom.centre - (f - 1) / 2.0) / f
    return small, _Geometry(centre, geom.axis, geom.long_mm, geom.short_mm, core, region)


def _upscale(mask: np.ndarray, full: np.ndarray, f: int, mu: float, sigma: float,
             p: ClassicalParams) -> np.ndarray:
    """Back to the native grid: linear interpolation, then air and bone voxels trimmed off the
    surface (holes inside a slice stay filled)."""
    if f > 1:
        mask = ndimage.zoom(mask.astype(np.float32), (1, f, f), order=1, mode="nearest",
                            grid_mode=True) >= 0.5
    trimmed = mask & ~_background(full, mu, sigma, p)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(trimmed, structure=structure) & mask


# --- prompt geometry -----------------------------------------------------------------------------

def _rc(points_xy: np.ndarray) -> np.ndarray:
    return np.asarray(points_xy, dtype=float)[:, ::-1]


def _segment_voxels(a: np.ndarray, b: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Voxels (row, column) along the part [lo, hi] of segment a -> b."""
    n = max(2, int(np.ceil(np.linalg.norm(b - a) * (hi - lo))) + 1)
    t = np.linspace(lo, hi, n)[:, None]
    return np.unique(np.round(a + t * (b - a)).astype(int), axis=0)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else np.array([0.0, 1.0])


def _geometry(prompt: Prompt, image: np.ndarray, spacing: tuple[float, float],
              p: ClassicalParams) -> _Geometry:
    scale = np.asarray(spacing, dtype=float)
    pts = _rc(prompt.points)
    kind = prompt.kind
    if kind in (PromptKind.LINE, PromptKind.BIDIRECTIONAL, PromptKind.ELLIPSE):
        a, b = pts[0], pts[1]
        long_mm = float(np.linalg.norm((b - a) * scale))
        short = None
        core = _segment_voxels(a, b, 0.2, 0.8)
        if len(pts) == 4:
            short = float(np.linalg.norm((pts[3] - pts[2]) * scale))
            core = np.vstack([core, _segment_voxels(pts[2], pts[3], 0.25, 0.75)])
        return _Geometry((a + b) / 2, _unit((b - a) * scale), max(long_mm, 2 * scale.min()),
                         short, core)
    if kind is PromptKind.CIRCLE:
        radius_mm = float(np.linalg.norm((pts[1] - pts[0]) * scale))
        core = _disc_voxels(pts[0], 0.5 * radius_mm, scale, image.shape)
        return _Geometry(pts[0], np.array([0.0, 1.0]), 2 * radius_mm, 2 * radius_mm, core)
    if kind is PromptKind.POLYGON:
        region = np.zeros(image.shape, dtype=bool)
        rr, cc = fill_polygon(pts[:, 0], pts[:, 1], shape=image.shape)
        region[rr, cc] = True
        if not region.any():
            region[tuple(np.clip(np.round(pts.mean(axis=0)).astype(int), 0,
                                 np.array(image.shape) - 1))] = True
        chord = longest_chord(region, spacing)
        core = np.argwhere(ndimage.binary_erosion(region, iterations=2)) if region.sum() > 20 \
            else np.argwhere(region)
        return _Geometry(np.argwhere(region).mean(axis=0), _unit((chord.end - chord.start) * scale),
                         max(chord.length_mm, 2 * scale.min()), None, core, region)
    if kind is PromptKind.ARROW:
        return _arrow_geometry(pts[0], pts[1], image, scale, p)
    core = _disc_voxels(pts[0], 3.0, scale, image.shape)  # POINT
    # a click gives no size: assume ``default_size_mm``, the walk finds the edges inside it
    return _Geometry(pts[0], np.array([0.0, 1.0]), p.default_size_mm, None, core)


def _disc_voxels(centre: np.ndarray, radius_mm: float, scale: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
    r = np.maximum(np.ceil(radius_mm / scale).astype(int), 0)
    rows, cols = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1]
    keep = (rows * scale[0]) ** 2 + (cols * scale[1]) ** 2 <= radius_mm ** 2
    vox = np.round(centre).astype(int) + np.stack([rows[keep], cols[keep]], axis=1)
    inside = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=1)
    return vox[inside]


def _arrow_geometry(head: np.ndarray, tail: np.ndarray, image: np.ndarray, scale: np.ndarray,
                    p: ClassicalParams) -> _Geometry:
    """The lesion lies beyond the tip, away from the tail.

    Its intensity is the soft-tissue HU along the shaft's continuation (a rim of partial volume
    or ground glass at the tip is skipped); its extent is the median exit distance of a fan of
    rays from the tip through the lesion-like region around it (cavities filled, not the lung a
    same-density chest wall rings; bridges opened).
    When that region's own diameter agrees with the fan, the region gives centre and axis. When
    it leaked (a hilar tumour into the mediastinum), the fan often stops at an airway inside the
    lesion: ``_arrow_scale`` picks the region at the scale where it is compact and edged. The
    narrow band (half-way to the tail side's HU) is tried first; the wide one when the narrow
    one lost the lesion or leaked, unless it found a small lesion with edges all round.
    """
    d = _unit((head - tail) * scale)  # mm-space direction pointing into the lesion
    step_mm = float(scale.min())
    t_mm = step_mm * np.arange(int(p.arrow_max_mm / step_mm))
    central = _ray(head, d, t_mm, scale, image.shape)
    if len(central) < 2:
        raise ValueError("Invalid arrow prompt - its tip points out of the image")
    smooth = ndimage.gaussian_filter(image.astype(np.float32), p.smooth_mm / scale)
    hu = ndimage.map_coordinates(smooth, central.T, order=1)
    near = hu[: max(3, int(p.arrow_sample_mm / step_mm))]
    behind = _ray(head, -d, t_mm[(t_mm >= 2.0) & (t_mm <= 6.0)], scale, image.shape)
    outside = float(np.median(ndimage.map_coordinates(smooth, behind.T, order=1))) \
        if len(behind) else None
    tissue = near[near > p.tissue_hu] if np.count_nonzero(near > p.tissue_hu) >= 3 else near
    mu = float(np.median(tissue))
    spread = float(median_abs_deviation(tissue, scale="normal"))
    half = max(p.arrow_min_band_hu, p.band_sigmas * spread)
    narrow = min(half, max(0.5 * abs(mu - outside), p.min_contrast_hu)) \
        if outside is not None else half  # the band stops half-way to the outside intensity
    no_edge = outside is not None and abs(mu - outside) < 2 * p.min_contrast_hu
    leak_max = p.arrow_leak_max_mm if no_edge else p.arrow_max_mm
    geom, enclosed = _arrow_measure(head, d, central, smooth, hu, mu, narrow, leak_max, scale, p,
                                    rescale=narrow >= half)
    lost = geom.long_mm <= p.arrow_min_plausible_mm
    if narrow < half and (lost or not enclosed):  # the narrow band lost the lesion or leaked
        wide, wide_enclosed = _arrow_measure(head, d, central, smooth, hu, mu, half, leak_max,
                                             scale, p)
        # a small lesion with edges all round in the narrow band: only an enclosed wide one
        if wide.long_mm > geom.long_mm and (wide_enclosed or (lost and not enclosed)):
            return wide
    return geom


def _arrow_measure(head: np.ndarray, d: np.ndarray, central: np.ndarray, smooth: np.ndarray,
                   hu: np.ndarray, mu: float, half: float, leak_max_mm: float,
                   scale: np.ndarray, p: ClassicalParams,
                   rescale: bool = True) -> tuple[_Geometry, bool]:
    """Centre, axis and extent of the lesion region in ``[mu - half, mu + half]`` at the tip,
    and whether edges bound it (it did not leak, or ``rescale`` found a scale that does); else
    the extent is at most ``leak_max_mm`` (the fan measures the leak)."""
    step_mm = float(scale.min())
    t_mm = step_mm * np.arange(int(p.arrow_max_mm / step_mm))
    band = np.abs(smooth - mu) <= half
    in_band = np.abs(hu - mu) <= half
    entry = int(np.argmax(in_band)) if in_band.any() else 0
    at = np.round(central[entry: entry + 4]).astype(int)
    region = _region_at(band, at, scale, p)
    exits = []
    for angle in np.deg2rad(np.arange(-p.arrow_fan_deg, p.arrow_fan_deg + 1, 10.0)):
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        ray = _ray(head, rot @ d, t_mm, scale, smooth.shape)
        exits.append(_exit(ndimage.map_coordinates(region.astype(np.uint8), ray.T, order=0) > 0,
                           int(p.arrow_entry_mm / step_mm)))
    exit_ = int(np.percentile(exits, p.arrow_exit_percentile))
    extent_mm = max(exit_ * step_mm, p.min_size_mm)
    core = np.round(central[entry: max(entry + 2, min(int(0.7 * exit_),
                                                        entry + int(p.arrow_core_mm / step_mm)))])
    core = core.astype(int)
    core = np.unique(core[in_band[entry: entry + len(core)]] if in_band.any() else core, axis=0)
    if region.any():
        chord = longest_chord(region, tuple(scale))
        if chord.length_mm <= p.arrow_region_ratio * extent_mm:  # the region did not leak
            return _Geometry(np.argwhere(region).mean(axis=0),
                             _unit((chord.end - chord.start) * scale),
                             max(chord.length_mm, p.min_size_mm), None, core), True
    extent_mm = min(extent_mm, leak_max_mm)
    if rescale:  # the fan may have stopped at a gap inside the lesion (an airway, a vessel)
        chosen = _arrow_scale(head, d, band, at, min(leak_max_mm, p.arrow_max_mm), scale, p)
        if chosen is not None:
            chord = longest_chord(chosen, tuple(scale))
            if chord.length_mm > extent_mm:
                return _Geometry(np.argwhere(chosen).mean(axis=0),
                                 _unit((chord.end - chord.start) * scale), chord.length_mm, None,
                                 core), True
    centre = head + (0.5 * extent_mm * d) / scale
    return _Geometry(centre, d, extent_mm, None, core), False


def _arrow_scale(head: np.ndarray, d: np.ndarray, band: np.ndarray, at: np.ndarray,
                 max_mm: float, scale: np.ndarray, p: ClassicalParams) -> np.ndarray | None:
    """The lesion on the slice when the tip's band region leaked, chosen among scales.

    For diameters from ``2 * min_size_mm`` to ``max_mm``: the tip's in-band component inside a
    disc of that diameter beyond the tip (the tip on its rim). Its score is the share of its
    outline on a real edge (not cut by the disc) times its solidity (a lesion is compact; a
    lesion plus the mediastinum or chest wall it touches is not). The smallest diameter scoring
    within ``arrow_scale_tolerance`` of the best wins; None when its outline is mostly cut
    (more than ``arrow_scale_max_cut``): no scale finds the lesion's edges.
    """
    half = int(np.ceil(max_mm / float(scale.min()))) + 2
    lo = np.maximum(np.round(head).astype(int) - half, 0)
    hi = np.minimum(np.round(head).astype(int) + half + 1, band.shape)
    window = remove_small_holes(ndimage.binary_closing(band[lo[0]:hi[0], lo[1]:hi[1]]),
                                max_size=_max_hole_pixels(scale, p))
    at = at - lo
    at = at[np.all((at >= 0) & (at < window.shape), axis=1)]
    rows, cols = np.mgrid[: window.shape[0], : window.shape[1]]
    scored: list[tuple[float, float, np.ndarray]] = []  # (cut share, score, region)
    for diameter in np.geomspace(2 * p.min_size_mm, max_mm, p.arrow_scales):
        centre = head - lo + 0.5 * diameter * d / scale
        disc = np.hypot((rows - centre[0]) * scale[0], (cols - centre[1]) * scale[1]) \
            <= 0.5 * diameter + float(scale.min())
        labels, _ = ndimage.label(window & disc)
        hit = labels[at[:, 0], at[:, 1]]
        if not hit.any():
            continue
        region = labels == hit[hit > 0][0]
        edge = region & ~ndimage.binary_erosion(region)
        cut = float((edge & ndimage.binary_dilation(window & ~disc)).sum()) / float(edge.sum())
        solidity = float(regionprops(region.astype(np.uint8))[0].solidity)
        scored.append((cut, (1.0 - cut) * solidity, region))
    if not scored:
        return None
    top = max(score for _, score, _ in scored)
    cut, _, region = next(item for item in scored if item[1] >= top - p.arrow_scale_tolerance)
    if cut > p.arrow_scale_max_cut:
        return None
    out = np.zeros(band.shape, dtype=bool)
    out[lo[0]:hi[0], lo[1]:hi[1]] = region
    return out


def _exit(inside: np.ndarray, max_entry: int) -> int:
    """Index where a ray leaves the first stretch of ``inside`` met within ``max_entry`` steps."""
    if not inside[: max_entry + 1].any():
        return 0
    entry = int(np.argmax(inside))
    outside = ~inside[entry:]
    return entry + (int(np.argmax(outside)) if outside.any() else len(outside))


def _ray(origin: np.ndarray, d: np.ndarray, t_mm: np.ndarray, scale: np.ndarray,
         shape: tuple[int, ...]) -> np.ndarray:
    """Points (row, column) at distances ``t_mm`` along ``d`` (mm space), up to the image edge."""
    ray = origin + (t_mm[:, None] * d) / scale
    ok = np.all((ray >= 0) & (ray <= np.asarray(shape) - 1), axis=1)
    stop = int(np.argmin(ok)) if not ok.all() else len(ok)
    return ray[:stop]


def _max_hole_pixels(scale: np.ndarray, p: ClassicalParams) -> int:
    """The largest hole filled in a region (a lesion's cavity), in pixels. Not the big ones:
    filling those turned a juxtapleural lesion's chest wall, with the lung inside it, into one
    12 cm 'lesion' (a +2500 % volume leak)."""
    return int(p.arrow_max_hole_mm ** 2 / float(np.prod(scale)))


def _region_at(band: np.ndarray, at: np.ndarray, scale: np.ndarray,
               p: ClassicalParams) -> np.ndarray:
    """The in-band component at ``at``, small holes filled, thin bridges to neighbours opened."""
    closed = ndimage.binary_closing(band, iterations=1)
    filled = remove_small_holes(closed, max_size=_max_hole_pixels(scale, p))
    opened = ndimage.binary_opening(filled, structure=disk(
        max(1, int(round(p.arrow_opening_mm / float(scale.min()))))))
    for candidate in (opened, filled):
        labels, _ = ndimage.label(candidate)
        hit = labels[at[:, 0], at[:, 1]]
        if hit.any():
            return labels == hit[hit > 0][0]
    return np.zeros(band.shape, dtype=bool)


# --- crop and priors -----------------------------------------------------------------------------

def _crop_box(geom: _Geometry, z: int, shape: tuple[int, ...], spacing: tuple[float, float, float],
              f: int, p: ClassicalParams) -> tuple[slice, slice, slice]:
    """The crop around the prompt; in-plane sizes are multiples of the down-sampling factor."""
    half_mm = p.crop_factor * geom.long_mm + p.crop_margin_mm
    half_z = int(np.ceil((p.z_factor * geom.long_mm + p.crop_margin_mm) / spacing[0]))
    box = [slice(max(z - half_z, 0), min(z + half_z + 1, shape[0]))]
    for axis in (0, 1):
        half = int(np.ceil(half_mm / spacing[axis + 1]))
        c = int(round(geom.centre[axis]))
        start, stop = max(c - half, 0), min(c + half + 1, shape[axis + 1])
        stop -= (stop - start) % f
        box.append(slice(start, stop))
    return tuple(box)


def _shift(geom: _Geometry, offset: np.ndarray, box: tuple[slice, ...]) -> _Geometry:
    core = np.round(geom.core - offset).astype(int)
    size = np.array([box[1].stop - box[1].start, box[2].stop - box[2].start])
    core = core[np.all((core >= 0) & (core < size), axis=1)]
    region = None if geom.region is None else geom.region[box[1], box[2]]
    return _Geometry(geom.centre - offset, geom.axis, geom.long_mm, geom.short_mm, core, region)


def _intensity(image: np.ndarray, core: np.ndarray, p: ClassicalParams) -> tuple[float, float]:
    """Median and robust spread of the HU under the prompt."""
    if len(core) == 0:
        raise ValueError("Invalid prompt - it covers no voxel of the image")
    hu = image[core[:, 0], core[:, 1]]
    mu = float(np.median(hu))
    sigma = float(median_abs_deviation(hu, scale="normal"))
    return mu, max(sigma, p.min_sigma_hu)


def _ellipse_distance(shape: tuple[int, int], geom: _Geometry, spacing: tuple[float, float],
                      semi_long: float, semi_short: float) -> np.ndarray:
    """Normalised elliptic distance (1 on the ellipse) of every voxel of a slice."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    dr = (rows - geom.centre[0]) * spacing[0]
    dc = (cols - geom.centre[1]) * spacing[1]
    u = dr * geom.axis[0] + dc * geom.axis[1]
    v = -dr * geom.axis[1] + dc * geom.axis[0]
    return np.sqrt((u / semi_long) ** 2 + (v / semi_short) ** 2)


def _ellipsoid(shape: tuple[int, ...], z0: int, geom: _Geometry,
               spacing: tuple[float, float, float], p: ClassicalParams) -> np.ndarray:
    """The 3D region allowed to hold lesion: an ellipsoid around the prompt."""
    semi_long = p.inplane_factor * geom.long_mm + 2.0
    short = geom.short_mm if geom.short_mm is not None else geom.long_mm
    semi_short = max(p.inplane_factor * short + 2.0, 0.5 * semi_long) \
        if geom.short_mm is not None else semi_long
    plane = _ellipse_distance(shape[1:], geom, spacing[1:], semi_long, semi_short)
    dz = (np.arange(shape[0]) - z0) * spacing[0] / (p.z_factor * geom.long_mm + 2.0)
    return plane[None] ** 2 + dz[:, None, None] ** 2 <= 1.0


def _prompt_region(image: np.ndarray, geom: _Geometry, mu: float, sigma: float,
                   spacing: tuple[float, float], p: ClassicalParams) -> np.ndarray:
    """The seed on the prompt slice: in-band voxels inside the 2D ellipse prior, under the prompt."""
    half = max(p.band_sigmas * sigma, p.min_band_hu)
    band = np.abs(image - mu) <= half
    semi_long = 0.5 * geom.long_mm + max(spacing)
    semi_short = 0.5 * geom.short_mm + max(spacing) if geom.short_mm else semi_long
    prior = _ellipse_distance(image.shape, geom, spacing, semi_long, semi_short) <= 1.0
    if geom.region is not None:
        prior &= geom.region
    region = ndimage.binary_opening(band & prior)
    core = np.zeros(image.shape, dtype=bool)
    core[geom.core[:, 0], geom.core[:, 1]] = True
    labels, _ = ndimage.label(region)
    hit = np.unique(labels[core & region])
    region = np.isin(labels, hit[hit > 0])
    radius = max(1, int(round(p.seed_erosion_mm / min(spacing))))
    seed = ndimage.binary_erosion(region, iterations=radius)
    if seed.sum() < core.sum():
        seed = core & band if (core & band).any() else core
    return seed


def _background(image: np.ndarray, mu: float, sigma: float, p: ClassicalParams) -> np.ndarray:
    """Voxels that cannot be this lesion: air and lung, bone (unless the lesion is as dense)."""
    return (image <= min(p.air_hu, mu - 4 * sigma)) | (image >= max(p.bone_hu, mu + 4 * sigma))


def _labels(sub: np.ndarray, z0: int, seed: np.ndarray, inside: np.ndarray, mu: float,
            sigma: float, p: ClassicalParams) -> np.ndarray:
    """Random-walker labels: 1 lesion seed, 2 background, 0 unknown, -1 inactive (far away)."""
    labels = np.zeros(sub.shape, dtype=np.int8)
    labels[_background(sub, mu, sigma, p)] = 2
    shell = ndimage.binary_dilation(inside, iterations=2) & ~inside
    labels[~inside] = -1
    labels[shell] = 2
    labels[z0][seed] = 1
    return labels


def _random_walk(sub: np.ndarray, smooth: np.ndarray, labels: np.ndarray,
                 spacing: tuple[float, float, float], mu: float, sigma: float,
                 p: ClassicalParams) -> np.ndarray:
    """3D random walker (scikit-image) on two channels: HU / ``rw_scale_hu`` (sharp edges to air
    and fat) and, from the denoised image, the distance to the lesion's HU in bands, capped at 1
    (low-contrast edges); edge weights exp(-beta * squared channel differences)."""
    raw = np.clip(sub, -1000.0, 1000.0) / p.rw_scale_hu
    if p.rw_contrast_weight > 0:
        half = max(p.band_sigmas * sigma, p.min_band_hu)
        contrast = p.rw_contrast_weight * np.minimum(np.abs(smooth - mu) / half, 1.0)
        data = np.stack([raw, contrast], axis=-1)
        channel_axis = -1
    else:
        data, channel_axis = raw, None
    std = float(data.std()) or 1.0
    if channel_axis is not None:
        std *= np.sqrt(2.0)
    rel = np.asarray(spacing) / min(spacing)
    with warnings.catch_warnings():  # "probability outside [0, 1]" within tolerance: harmless
        warnings.simplefilter("ignore", UserWarning)
        result = random_walker(data, labels, beta=p.rw_beta * 10 * std, mode="cg_j", tol=p.rw_tol,
                               spacing=rel, channel_axis=channel_axis)
    return result == 1


def _propagate(rough: np.ndarray, z0: int, seed: np.ndarray, spacing: tuple[float, float, float],
               p: ClassicalParams) -> np.ndarray:
    """Slice by slice away from the prompt slice, keep what continues the previous slice's mask.

    A direction stops where the region collapses (under ``min_slice_fraction`` of the prompt
    slice); a slice growing more than ``leak_growth`` times the previous one is a leak and is cut
    back to the previous outline. Holes are filled per slice (lesion truth includes them).
    """
    plane = spacing[1:]
    out = np.zeros(rough.shape, dtype=bool)
    out[z0] = first = ndimage.binary_fill_holes(largest_component(rough[z0] | seed))
    minimum = max(p.min_slice_fraction * float(first.sum()), 3.0)
    reach = disk(max(1, int(round(p.step_dilation_mm / min(plane)))))
    for step in (1, -1):
        prev, z = first, z0 + step
        while 0 <= z < rough.shape[0]:
            cur = rough[z] & ndimage.binary_dilation(prev, structure=reach)
            cur = ndimage.binary_fill_holes(_components_touching(cur, prev))
            if cur.sum() < minimum:
                break
            if cur.sum() > p.leak_growth * prev.sum() + 20:
                cur &= ndimage.binary_dilation(prev, iterations=1)
            out[z] = prev = cur
            z += step
    return out


def _components_touching(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    hit = np.unique(labels[anchor & mask])
    return np.isin(labels, hit[hit > 0])
