"""A PNG preview of one segment: the prompt slice in a CT window, the mask outline, the prompt.

Example
-------
>>> render_preview(volume, mask, prompt.points, prompt.slice_index, "arrow",
...                Path("out/previews/seg-1.png"))  # doctest: +SKIP
PosixPath('out/previews/seg-1.png')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from dicom_io.files import atomic_path
from dicom_io.volume import Volume

# Context kept around the lesion and prompt: a fraction of their extent, at least this many voxels.
_MARGIN_FRACTION = 0.6
_MIN_MARGIN = 24
# A crop where more than this fraction of voxels is air-like (< -500 HU) is shown in lung window.
_RING_PX = 4  # width of the ring around a lesion that decides the window
_AIR_FRACTION = 0.4
_AIR_HU = -500.0
#: The mask outline's and the GSPS drawing's colours (RGB), for legends.
MASK_COLOUR = (255, 212, 0)
PROMPT_COLOUR = (0, 229, 255)
#: The image part of a preview is SIZE x SIZE pixels; a title bar of TITLE_PX sits above it.
SIZE = 256
TITLE_PX = 18


@dataclass(frozen=True)
class _Window:
    width: float
    level: float


class CtWindow(Enum):
    """Display windows (width, level) in HU."""

    SOFT_TISSUE = _Window(400.0, 40.0)
    LUNG = _Window(1500.0, -600.0)


def render_preview(
    volume: Volume,
    mask: np.ndarray,
    prompt_points_voxel: np.ndarray,
    slice_index: int,
    kind: str,
    out_path: Path,
    region: np.ndarray | None = None,
) -> Path:
    """Draw the prompt slice, the mask outline and the prompt (arrow with head) as a PNG.

    ``prompt_points_voxel`` is (N, 2) as (column, row) on slice ``slice_index``, in the order
    of :class:`sam2ct.prompts.Prompt` (arrow: head, then tail). The view is cropped around the
    lesion and prompt with some context; the title gives the kind and the volume in mL.
    ``region`` (rows, columns), when given, is what the view is cropped around instead (e.g.
    the same box on every slice of a lesion); the points are then drawn but not cropped to.
    """
    if mask.shape != volume.array.shape:
        raise ValueError(
            f"Invalid 'mask' shape {mask.shape} - the volume is {volume.array.shape}"
        )
    if not 0 <= slice_index < volume.array.shape[0]:
        raise ValueError(
            f"Invalid 'slice_index' {slice_index} - the volume has {volume.array.shape[0]} slices"
        )
    points = np.asarray(prompt_points_voxel, dtype=float).reshape(-1, 2)
    kind = str(getattr(kind, "value", kind))
    plane, outline = volume.array[slice_index], mask[slice_index]
    if region is None:
        box = _crop_box(outline if outline.any() else mask.any(axis=0), points, plane.shape)
    else:
        box = _crop_box(region, np.empty((0, 2)), plane.shape)
    crop, outline = plane[box[0]:box[1], box[2]:box[3]], outline[box[0]:box[1], box[2]:box[3]]
    window = choose_window(crop, outline)
    volume_ml = np.count_nonzero(mask) * float(np.prod(volume.spacing)) / 1000.0
    image = _draw(crop, outline, points - [box[2], box[0]], kind, window, volume.spacing)
    _caption(image, f"{kind}  {volume_ml:.1f} mL  slice {slice_index}", window)
    return _save(image, Path(out_path))


def choose_window(crop: np.ndarray, region: np.ndarray | None = None) -> CtWindow:
    """Lung window when the lesion's surroundings are air-dominated, else soft tissue (W400/L40).

    With ``region`` (the lesion on ``crop``), only a ring around it counts: air outside the body
    in the crop's corners must not turn a liver lesion's preview into a lung window.
    """
    if region is not None and region.any():
        ring = ndimage.binary_dilation(region, iterations=_RING_PX) & ~region
        crop = crop[ring]
    air = float(np.mean(crop < _AIR_HU)) if crop.size else 0.0
    return CtWindow.LUNG if air > _AIR_FRACTION else CtWindow.SOFT_TISSUE


def _crop_box(
    region: np.ndarray, points: np.ndarray, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) around the region and the points, square, with margin."""
    rows, cols = np.nonzero(region)
    all_rows = np.concatenate([rows, points[:, 1]]) if points.size else rows
    all_cols = np.concatenate([cols, points[:, 0]]) if points.size else cols
    if all_rows.size == 0:
        return 0, shape[0], 0, shape[1]
    centre = np.array([all_rows.min() + all_rows.max(), all_cols.min() + all_cols.max()]) / 2
    extent = max(all_rows.max() - all_rows.min(), all_cols.max() - all_cols.min())
    half = extent / 2 + max(_MIN_MARGIN, _MARGIN_FRACTION * extent)
    r0, c0 = (np.floor(centre - half)).astype(int)
    r1, c1 = (np.ceil(centre + half)).astype(int) + 1
    return max(r0, 0), min(r1, shape[0]), max(c0, 0), min(c1, shape[1])


def _draw(
    crop: np.ndarray,
    outline: np.ndarray,
    points: np.ndarray,
    kind: str,
    window: CtWindow,
    spacing: tuple[float, float, float],
) -> Image.Image:
    """The windowed crop scaled into the preview square (true aspect), mask outline, prompt."""
    w = window.value
    grey = np.clip((crop - (w.level - w.width / 2)) / w.width * 255.0, 0, 255).astype(np.uint8)
    height_mm, width_mm = crop.shape[0] * spacing[1], crop.shape[1] * spacing[2]
    scale = SIZE / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    view = Image.fromarray(grey).resize(size, Image.Resampling.NEAREST).convert("RGB")
    if outline.any():
        big = np.asarray(Image.fromarray(outline).resize(size, Image.Resampling.NEAREST))
        edge = big & ~ndimage.binary_erosion(big, iterations=2, border_value=1)
        pixels = np.asarray(view).copy()
        pixels[edge] = MASK_COLOUR
        view = Image.fromarray(pixels)
    offset = ((SIZE - size[0]) // 2, TITLE_PX + (SIZE - size[1]) // 2)
    image = Image.new("RGB", (SIZE, SIZE + TITLE_PX))
    image.paste(view, offset)
    # voxel (column, row) centres -> preview pixels
    xy = (points + 0.5) * [size[0] / crop.shape[1], size[1] / crop.shape[0]] + offset
    _draw_prompt(ImageDraw.Draw(image), xy, kind)
    return image


def _draw_prompt(draw: ImageDraw.ImageDraw, xy: np.ndarray, kind: str) -> None:
    """The prompt as drawn by the radiologist: arrow with head, line(s), circle, polygon, ..."""
    pts = [tuple(p) for p in xy.tolist()]
    if kind == "arrow" and len(pts) >= 2:
        draw.line([pts[1], pts[0]], fill=PROMPT_COLOUR, width=2)
        draw.polygon(_arrow_head(xy[0], xy[1]), fill=PROMPT_COLOUR)
    elif kind in ("line", "bidirectional", "ellipse") and len(pts) >= 2:
        for a, b in zip(pts[0::2], pts[1::2], strict=False):
            draw.line([a, b], fill=PROMPT_COLOUR, width=2)
            _marker(draw, a, "+")
            _marker(draw, b, "+")
    elif kind == "circle" and len(pts) >= 2:
        (cx, cy), r = pts[0], float(np.linalg.norm(xy[1] - xy[0]))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=PROMPT_COLOUR, width=2)
    elif kind == "polygon" and len(pts) >= 3:
        draw.line([*pts, pts[0]], fill=PROMPT_COLOUR, width=2)
    else:
        for p in pts:
            _marker(draw, p, "x")


def _arrow_head(head: np.ndarray, tail: np.ndarray, length: float = 10.0) -> list[tuple]:
    """The filled triangle at an arrow's head, pointing from tail to head."""
    direction = head - tail
    norm = float(np.linalg.norm(direction)) or 1.0
    d = direction / norm
    n = np.array([-d[1], d[0]])
    base = head - d * length
    return [tuple(head), tuple(base + n * length / 2.5), tuple(base - n * length / 2.5)]


def _marker(draw: ImageDraw.ImageDraw, p: tuple, shape: str, r: float = 4.0) -> None:
    """A small '+' or 'x' at ``p``."""
    x, y = p
    if shape == "+":
        arms = [((x - r, y), (x + r, y)), ((x, y - r), (x, y + r))]
    else:
        arms = [((x - r, y - r), (x + r, y + r)), ((x - r, y + r), (x + r, y - r))]
    for arm in arms:
        draw.line(arm, fill=PROMPT_COLOUR, width=2)


def _caption(image: Image.Image, title: str, window: CtWindow) -> None:
    """The title in the bar above the image and the window (W/L) in its lower left corner."""
    draw = ImageDraw.Draw(image)
    w = window.value
    draw.text((4, 2), title, fill="white", font=_font(12))
    draw.text((3, image.height - 12), f"W{w.width:g} L{w.level:g}", fill="white", font=_font(9))


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def _save(image: Image.Image, path: Path) -> Path:
    """Write the PNG whole or not at all."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
