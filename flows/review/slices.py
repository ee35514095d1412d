"""PNG slices of one segmentation for the review page, rendered from the series and its SEG.

Each slice is drawn by :func:`dicom_io.seg.render_preview` (CT window, mask outline, and on the
prompt slice the arrow or line as drawn), cropped to the same box on every slice of the case so
that scrolling keeps the lesion in place. PNGs are cached on disk by SEG, segment and slice; the
last few series read stay in memory.

Example
-------
>>> renderer = SliceRenderer(Path("/tmp/review-cache"))  # doctest: +SKIP
>>> renderer.png(case, case.prompt_slice)  # doctest: +SKIP
PosixPath('/tmp/review-cache/1.2.3-1-41.png')
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_io.seg import read_seg_masks, render_preview
from dicom_io.volume import Volume, load_series
from flows.review.cases import Case

#: Series kept loaded (a CT series is tens to hundreds of MB).
KEEP_LOADED = 2


class SliceUnavailable(Exception):
    """A case's slices cannot be drawn (no mask, or its series or SEG cannot be read)."""


@dataclass(frozen=True)
class _Loaded:
    volume: Volume
    mask: np.ndarray
    region: np.ndarray  # (rows, columns) the view is cropped around on every slice


class SliceRenderer:
    """Renders and caches the slices of cases (thread-safe: the page loads several at once)."""

    def __init__(self, cache_dir: Path, keep: int = KEEP_LOADED) -> None:
        self.cache_dir = Path(cache_dir)
        self._keep = keep
        self._loaded: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, case: Case, slice_index: int) -> Path:
        """The PNG of ``slice_index`` (one of ``case.slices``), rendered on first use.

        Raises
        ------
        SliceUnavailable
            Not one of the case's slices, no mask, or its series or SEG cannot be read.
        """
        if slice_index not in case.slices:
            raise SliceUnavailable(f"slice {slice_index} is not shown for segmentation {case.id}")
        item = case.item
        if not case.ok or item.segment_number is None:
            raise SliceUnavailable(f"segmentation {case.id} has no mask")
        out = self.cache_dir / f"{item.seg_sop_instance_uid}-{item.segment_number}-{slice_index}.png"
        if out.is_file():
            return out
        loaded = self._load(case)
        points = case.prompt_points() if slice_index == case.prompt_slice else np.empty((0, 2))
        return render_preview(loaded.volume, loaded.mask, points, slice_index, case.kind, out,
                              region=loaded.region)

    def _load(self, case: Case) -> _Loaded:
        """The case's series, mask and crop region (loaded once, the last few kept)."""
        item = case.item
        key = (item.series_path, item.series_instance_uid, item.seg_path, item.segment_number)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            try:
                volume = load_series(Path(item.series_path or ""), item.series_instance_uid)
                mask = read_seg_masks(Path(item.seg_path or ""), volume)[item.segment_number]
            except Exception as exc:  # noqa: BLE001 - whatever the files are, one clear reason
                raise SliceUnavailable(f"segmentation {case.id}: its series or SEG cannot be "
                                       f"read ({type(exc).__name__})") from exc
            loaded = _Loaded(volume, mask, _region(mask, case.prompt_points()))
            self._loaded[key] = loaded
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
            return loaded


def _region(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The mask's projection on a slice plus the pixels under the drawing's points."""
    region = mask.any(axis=0)
    rows, cols = region.shape
    for col, row in np.floor(points).astype(int):
        region[min(max(row, 0), rows - 1), min(max(col, 0), cols - 1)] = True
    return region
