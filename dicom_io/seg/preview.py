"""A PNG preview of one segment: the prompt slice in a CT window, the mask outline, the prompt.

Example
-------
>>> render_preview(volume, mask, prompt.points, prompt.slice_index, "arrow",
...                Path("out/previews/seg-1.png"))  # doctest: +SKIP
PosixPath('out/previews/seg-1.png')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon
from scipy import ndimage

from dicom_io.volume import Volume

# Context kept around the lesion and prompt: a fraction of their extent, at least this many voxels.
_MARGIN_FRACTION = 0.6
_MIN_MARGIN = 24
# A crop where more than this fraction of voxels is air-like (< -500 HU) is shown in lung window.
_RING_PX = 4  # width of the ring around a lesion that decides the window
_AIR_FRACTION = 0.4
_AIR_HU = -500.0
_MASK_COLOUR = "#ffd400"
_PROMPT_COLOUR = "#00e5ff"


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
) -> Path:
    """Draw the prompt slice, the mask outline and the prompt (arrow with head) as a PNG.

    ``prompt_points_voxel`` is (N, 2) as (column, row) on slice ``slice_index``, in the order
    of :class:`sam2ct.prompts.Prompt` (arrow: head, then tail). The view is cropped around the
    lesion and prompt with some context; the title gives the kind and the volume in mL.
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
    image, outline = volume.array[slice_index], mask[slice_index]
    box = _crop_box(outline if outline.any() else mask.any(axis=0), points, image.shape)
    crop = image[box[0]:box[1], box[2]:box[3]]
    window = choose_window(crop, outline[box[0]:box[1], box[2]:box[3]])
    volume_ml = float(mask.sum()) * float(np.prod(volume.spacing)) / 1000.0
    figure = _figure(crop, outline[box[0]:box[1], box[2]:box[3]], points - [box[2], box[0]],
                     kind, window, volume.spacing)
    title = f"{kind}  {volume_ml:.1f} mL  slice {slice_index}"
    figure.suptitle(title, fontsize=9, color="white")
    return _save(figure, Path(out_path))


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


def _figure(
    crop: np.ndarray,
    outline: np.ndarray,
    points: np.ndarray,
    kind: str,
    window: CtWindow,
    spacing: tuple[float, float, float],
) -> Figure:
    """The matplotlib figure (no pyplot state): windowed image, outline, prompt."""
    figure = Figure(figsize=(4, 4.3), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.9))
    w = window.value
    axes.imshow(crop, cmap="gray", vmin=w.level - w.width / 2, vmax=w.level + w.width / 2,
                aspect=spacing[1] / spacing[2], interpolation="nearest")
    if outline.any():
        axes.contour(outline.astype(float), levels=[0.5], colors=_MASK_COLOUR, linewidths=1.2)
    _draw_prompt(axes, points, kind)
    axes.set_xlim(-0.5, crop.shape[1] - 0.5)
    axes.set_ylim(crop.shape[0] - 0.5, -0.5)
    axes.set_axis_off()
    axes.text(0.01, 0.01, f"W{w.width:g} L{w.level:g}", color="white", fontsize=7,
              transform=axes.transAxes)
    return figure


def _draw_prompt(axes, points: np.ndarray, kind: str) -> None:
    """The prompt as drawn by the radiologist: arrow with head, line(s), ellipse axes, ..."""
    style = {"color": _PROMPT_COLOUR, "linewidth": 1.5}
    if kind == "arrow" and len(points) >= 2:
        axes.annotate("", xy=tuple(points[0]), xytext=tuple(points[1]),
                      arrowprops={"arrowstyle": "-|>", "color": _PROMPT_COLOUR, "lw": 1.5,
                                  "mutation_scale": 14})
    elif kind in ("line", "bidirectional", "ellipse") and len(points) >= 2:
        for a, b in zip(points[0::2], points[1::2], strict=False):
            axes.plot([a[0], b[0]], [a[1], b[1]], marker="+", markersize=6, **style)
    elif kind == "circle" and len(points) >= 2:
        radius = float(np.linalg.norm(points[1] - points[0]))
        axes.add_patch(Circle(tuple(points[0]), radius, fill=False, **style))
    elif kind == "polygon" and len(points) >= 3:
        axes.add_patch(Polygon(points, closed=True, fill=False, **style))
    else:
        axes.plot(points[:, 0], points[:, 1], linestyle="none", marker="x", markersize=8,
                  **style)


def _save(figure: Figure, path: Path) -> Path:
    """Render to a temporary PNG in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png", facecolor="black")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
