"""Masks -> DICOM SEG (highdicom), SEG -> masks on a volume's grid, and PNG previews.

Example
-------
>>> from dicom_io.seg import AlgorithmSpec, SegmentSpec, read_seg_masks, write_seg
>>> spec = SegmentSpec.for_annotation("1.2.3", 0, "line", "Lesion, line 23 mm")
>>> path = write_seg(volume, [mask], [spec], AlgorithmSpec("classical", "1.0.0"),
...                  out_dir)  # doctest: +SKIP
>>> read_seg_masks(path, volume)[1].sum() == mask.sum()  # doctest: +SKIP
True
"""

from dicom_io.seg.content import (
    AlgorithmFamily,
    AlgorithmSpec,
    PresentationStateRef,
    SegmentSpec,
    annotation_index_of,
    segment_label,
    tracking_id_for,
    tracking_uid_for,
)
from dicom_io.seg.preview import CtWindow, choose_window, render_preview
from dicom_io.seg.reader import SegmentOrigin, read_provenance, read_seg_masks
from dicom_io.seg.writer import seg_uids, write_seg

__all__ = [
    "AlgorithmFamily",
    "AlgorithmSpec",
    "CtWindow",
    "PresentationStateRef",
    "SegmentOrigin",
    "SegmentSpec",
    "annotation_index_of",
    "choose_window",
    "read_provenance",
    "read_seg_masks",
    "render_preview",
    "seg_uids",
    "segment_label",
    "tracking_id_for",
    "tracking_uid_for",
    "write_seg",
]
