"""A synthetic torso CT as numpy arrays: anatomy in Hounsfield units plus irregular lesions.

Everything is vectorised numpy evaluated on the voxel grid in patient millimetres, and every random
choice comes from the ``numpy.random.Generator`` passed in, so a seed fixes the phantom.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np
from scipy import ndimage


class Tissue(IntEnum):
    """Label of each voxel before lesions are added; the value indexes ``TISSUE_HU``."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERA = 3
    LUNG = 4
    LIVER = 5
    KIDNEY = 6
    BONE = 7
    AORTA = 8


TISSUE_HU = np.array(
    [-1000.0, -100.0, 50.0, 15.0, -850.0, 60.0, 35.0, 450.0, 45.0], dtype=np.float32
)


class Organ(StrEnum):
    """Organs that host lesions (manifest value ``organ``)."""

    LIVER = "liver"
    LUNG = "lung"
    KIDNEY = "kidney"


# Lesion diameter range (mm) and lesion HU choices (hypo-, hyper-dense) per host organ.
_LESION_DIAMETER = {Organ.LIVER: (12.0, 60.0), Organ.LUNG: (5.0, 35.0), Organ.KIDNEY: (8.0, 30.0)}
_LESION_HU = {
    Organ.LIVER: ((10.0, 35.0), (95.0, 130.0)),
    Organ.LUNG: ((-10.0, 20.0), (25.0, 55.0)),
    Organ.KIDNEY: ((0.0, 15.0), (65.0, 85.0)),
}


@dataclass(frozen=True)
class Grid:
    """The CT voxel grid: axial slices, square pixels, slice index increasing towards the head.

    ``origin`` is the LPS position (mm) of the centre of voxel (column 0, row 0, slice 0).
    """

    rows: int
    columns: int
    slices: int
    pixel_spacing: float
    slice_spacing: float
    origin: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (slices, rows, columns)."""
        return (self.slices, self.rows, self.columns)

    @property
    def affine(self) -> np.ndarray:
        """(column, row, slice, 1) -> LPS mm."""
        affine = np.diag([self.pixel_spacing, self.pixel_spacing, self.slice_spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinates of voxel centres, in mm from the grid centre."""
        z = (np.arange(self.slices) - (self.slices - 1) / 2) * self.slice_spacing
        y = (np.arange(self.rows) - (self.rows - 1) / 2) * self.pixel_spacing
        x = (np.arange(self.columns) - (self.columns - 1) / 2) * self.pixel_spacing
        return (
            z.reshape(-1, 1, 1).astype(np.float32),
            y.reshape(1, -1, 1).astype(np.float32),
            x.reshape(1, 1, -1).astype(np.float32),
        )


@dataclass(frozen=True)
class Lesion:
    """One lesion: its truth mask inside a bounding box of the grid, and what it was made as."""

    id: str
    organ: Organ
    diameter_mm: float
    mean_hu: float
    box: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, shape of ``box``

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The truth mask on the whole grid (uint8 0/1)."""
        full = np.zeros(shape, dtype=np.uint8)
        full[self.box] = self.mask
        return full


@dataclass(frozen=True)
class Phantom:
    """A rendered study: HU array (slices, rows, columns) on ``grid`` and its lesions."""

    hu: np.ndarray
    grid: Grid
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True)
class _Body:
    """Sizes (mm) of the torso that organ placement depends on."""

    a: float  # half width
    b: float  # half depth
    length: float  # covered cranio-caudal extent


def _ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Normalised elliptic radius (1 on the outline)."""
    return (u / a) ** 2 + (v / b) ** 2


def _anatomy(grid: Grid, body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Tissue labels (uint8) of a torso from lung bases (top) to kidneys (bottom)."""
    z, y, x = grid.axes_mm()
    t = z / body.length + 0.5  # 0 at the lowest slice, 1 at the top
    a, b = body.a, body.b
    labels = np.zeros(grid.shape, dtype=np.uint8)
    outline = _ellipse(x, y, a, b) <= 1.0
    fat = rng.uniform(8.0, 22.0)
    muscle = _ellipse(x, y, a - fat, b - fat) <= 1.0
    inner = _ellipse(x, y, a - fat - 10.0, b - fat - 10.0) <= 1.0
    labels[np.broadcast_to(outline, grid.shape)] = Tissue.FAT
    labels[np.broadcast_to(muscle, grid.shape)] = Tissue.MUSCLE
    labels[np.broadcast_to(inner, grid.shape)] = Tissue.VISCERA
    # Liver on the patient's right (negative x), centred in the covered extent.
    liver_t = np.clip(1.0 - ((t - 0.48) / 0.24) ** 2, 0.0, 1.0)
    liver = _ellipse(x + 0.3 * a, y + 0.02 * b, 0.55 * a, 0.7 * b) <= liver_t
    labels[liver & inner] = Tissue.LIVER
    # Kidneys: posterior, both sides, low in the covered extent.
    kid_t = np.clip(1.0 - ((t - 0.17) / 0.15) ** 2, 0.0, 1.0)
    for side in (-1.0, 1.0):
        kidney = _ellipse(x - side * 0.42 * a, y - 0.4 * b, 30.0, 22.0) <= kid_t
        labels[kidney & (labels != Tissue.LIVER)] = Tissue.KIDNEY
    # Lungs: upper part, from a dome over the liver to full width at the top.
    lung_t = np.clip((t - 0.58) / 0.22, 0.0, 1.0)
    for side in (-1.0, 1.0):
        lung = _ellipse(x - side * 0.45 * a, y + 0.02 * b, 0.36 * a, 0.62 * b) <= lung_t
        labels[lung] = Tissue.LUNG
    # Aorta, then spine (vertebral body + posterior element), through the whole extent.
    aorta = _ellipse(x - 0.1 * a, y - 0.32 * b, 12.0, 12.0) <= 1.0
    labels[np.broadcast_to(aorta, grid.shape) & inner] = Tissue.AORTA
    vertebra = (_ellipse(x, y - 0.62 * b, 20.0, 16.0) <= 1.0) | (
        _ellipse(x, y - 0.85 * b, 8.0, 14.0) <= 1.0
    )
    labels[np.broadcast_to(vertebra, grid.shape)] = Tissue.BONE
    # Ribs: short arcs inside the muscle wall, from the liver up, repeating along z.
    angle = np.arctan2(y, x)
    ring = (_ellipse(x, y, a - fat - 3.0, b - fat - 3.0) <= 1.0) & ~inner
    oblique = np.cos(2 * np.pi * z / 26.0 + 2.0 * angle)  # ribs slope, so each slice cuts some
    ribs = ring & (np.cos(9.0 * angle) > 0.3) & (oblique > 0.3) & (t > 0.35)
    labels[ribs] = Tissue.BONE
    return labels


def _lesion_shape(
    grid: Grid, centre: np.ndarray, radius: float, rng: np.random.Generator
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Irregular blob: an oriented ellipsoid whose radius varies with a smooth random field."""
    reach = radius * 1.5
    spacing = np.array([grid.slice_spacing, grid.pixel_spacing, grid.pixel_spacing])
    shape = np.array(grid.shape)
    low = np.clip(np.floor((centre - reach) / spacing).astype(int), 0, shape - 1)
    high = np.clip(np.ceil((centre + reach) / spacing).astype(int) + 1, 1, shape)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    axes = [
        (np.arange(s.start, s.stop) * sp - c).astype(np.float32)
        for s, sp, c in zip(box, spacing, centre, strict=True)
    ]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    theta = rng.uniform(0, np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    semi = radius * rng.uniform(0.8, 1.15, size=3)
    dist = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (dz / semi[2]) ** 2)
    norm = np.sqrt(u**2 + v**2 + dz**2) + 1e-6
    field = np.zeros_like(dist)
    for _ in range(6):  # smooth random radial field on the unit sphere
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        proj = (u * direction[0] + v * direction[1] + dz * direction[2]) / norm
        field += rng.uniform(0.03, 0.08) * np.cos(
            np.pi * rng.uniform(1, 3) * proj + rng.uniform(0, 2 * np.pi)
        )
    mask = dist <= 1.0 + field
    centre_index = tuple(
        int(round(c / sp)) - s.start for c, sp, s in zip(centre, spacing, box, strict=True)
    )
    if all(0 <= i < n for i, n in zip(centre_index, mask.shape, strict=True)):
        mask[centre_index] = True  # never empty, however small
    return box, mask


_HOST = {Organ.LIVER: Tissue.LIVER, Organ.LUNG: Tissue.LUNG, Organ.KIDNEY: Tissue.KIDNEY}


def _place_lesion(grid: Grid, host: np.ndarray, radius: float,
                  taken: list[tuple[np.ndarray, float]],
                  rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
    """A lesion centre (mm from voxel 0, array axis order) deep enough inside ``host``, clear of
    other lesions, and the radius shrunk if the organ is too thin for it."""
    step = max(2, grid.columns // 128)
    small = host[::step, ::step, ::step]
    if not small.any():
        return None
    spacing = np.array([grid.slice_spacing, grid.pixel_spacing, grid.pixel_spacing])
    depth = ndimage.distance_transform_edt(small, sampling=spacing * step)
    radius = min(radius, float(depth.max()) / 0.6)
    candidates = np.flatnonzero(depth >= 0.6 * radius)
    extent = (np.array(grid.shape) - 1) * spacing
    for _ in range(40):
        pick = np.array(np.unravel_index(rng.choice(candidates), small.shape))
        centre = pick * step * spacing
        clear = all(np.linalg.norm(centre - c) > radius + r + 4.0 for c, r in taken)
        if clear and np.all(centre - radius > 0) and np.all(centre + radius < extent):
            return centre, radius
    return None


def _lesions(grid: Grid, labels: np.ndarray, count: int,
             rng: np.random.Generator) -> list[tuple[Organ, float, float, tuple, np.ndarray]]:
    """Choose organ, size, contrast and shape of ``count`` lesions (fewer if they do not fit).

    Each lesion lies inside its host organ (clipped to it), so its voxels all carry its HU.
    """
    organs = [Organ.LIVER, Organ.LUNG, Organ.KIDNEY]
    min_diameter = max(5.0, 3.0 * grid.pixel_spacing)
    max_diameter = max(0.6 * grid.slices * grid.slice_spacing, min_diameter)
    taken: list[tuple[np.ndarray, float]] = []
    made = []
    for i in range(count):
        organ = organs[i % 3] if i < 3 else organs[int(rng.integers(3))]
        low, high = _LESION_DIAMETER[organ]
        diameter = float(np.clip(rng.uniform(low, high), min_diameter, max_diameter))
        host = labels == _HOST[organ]
        placed = _place_lesion(grid, host, diameter / 2, taken, rng)
        if placed is None or 2 * placed[1] < min_diameter:
            continue
        centre, radius = placed
        taken.append((centre, radius))
        hu_range = _LESION_HU[organ][int(rng.integers(2))]
        mean_hu = float(round(rng.uniform(*hu_range)))
        box, mask = _lesion_shape(grid, centre, radius, rng)
        made.append((organ, 2 * radius, mean_hu, box, mask & host[box]))
    return made


def _texture(grid: Grid, rng: np.random.Generator, std: float = 6.0) -> np.ndarray:
    """Smooth low-frequency tissue inhomogeneity: an upsampled 2D field plus a z drift."""
    coarse = rng.normal(0.0, std, size=(8, 8)).astype(np.float32)
    plane = ndimage.zoom(coarse, (grid.rows / 8, grid.columns / 8), order=1, grid_mode=True,
                         mode="nearest")[: grid.rows, : grid.columns]
    drift = np.interp(np.linspace(0, 3, grid.slices), np.arange(4),
                      rng.normal(0.0, std / 2, size=4)).astype(np.float32)
    return plane[None, :, :] + drift[:, None, None]


def make_phantom(
    grid: Grid, rng: np.random.Generator, lesion_count: int = 3, noise_hu: float = 12.0
) -> Phantom:
    """Render anatomy, lesions, partial-volume blur and noise on ``grid``.

    Lesions are drawn with a uniform HU (their ``mean_hu``) before blur and noise, so the truth
    mask's interior averages to that HU in the final image.
    """
    fov = grid.columns * grid.pixel_spacing
    body = _Body(
        a=0.42 * fov * rng.uniform(0.88, 1.0),
        b=0.30 * fov * rng.uniform(0.88, 1.0),
        length=grid.slices * grid.slice_spacing,
    )
    labels = _anatomy(grid, body, rng)
    hu = TISSUE_HU[labels]
    hu += _texture(grid, rng)
    made = _lesions(grid, labels, lesion_count, rng)
    lesions = []
    for n, (organ, diameter, mean_hu, box, mask) in enumerate(made, start=1):
        hu[box][mask] = mean_hu
        lesions.append(Lesion(f"L{n}", organ, round(diameter, 1), mean_hu, box, mask))
    sigma_xy = 0.6
    sigma_z = 0.35
    hu = ndimage.gaussian_filter(hu, sigma=(sigma_z, sigma_xy, sigma_xy), truncate=3.0)
    hu += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(noise_hu)
    return Phantom(hu=hu, grid=grid, lesions=tuple(lesions))
