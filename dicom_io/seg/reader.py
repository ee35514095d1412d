"""A DICOM SEG read back onto a volume's grid: segment number -> boolean mask (highdicom).

Frames are placed by the source images they reference (SOP Instance UID, and frame number for a
multi-frame source). A SEG that references no image of the volume, or does not state that spatial
locations are preserved (dcmqi's), but shares its frame of reference is placed by geometry instead
(its frames must fall on the volume's voxel grid).

:func:`read_provenance` reads which GSPS annotation each segment of one of our SEGs came from.

Example
-------
>>> masks = read_seg_masks(Path("seg.dcm"), volume)  # doctest: +SKIP
>>> sorted(masks), masks[1].shape == volume.array.shape  # doctest: +SKIP
([1, 2], True)
>>> [(o.segment_number, o.annotation_index)
...  for o in read_provenance(Path("seg.dcm"))]  # doctest: +SKIP
[(1, 0), (2, 3)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from dicom_io.errors import DicomInputError
from dicom_io.seg.content import (
    PRESENTATION_STATE_CLASS_ROOT,
    annotation_index_of,
    tracking_uid_for,
)
from dicom_io.volume import Volume

# A SEG frame may sit this far (in voxels) from a voxel centre of the volume and still match.
_GRID_TOLERANCE = 0.05


def read_seg_masks(path: Path, volume: Volume) -> dict[int, np.ndarray]:
    """Read every segment of the SEG at ``path`` as a bool mask (slices, rows, columns).

    Raises
    ------
    DicomInputError
        Not a readable SEG, another frame of reference, no frame on the volume's grid.
    """
    path = Path(path)
    seg = _open(path)
    _check_frame_of_reference(seg, volume, path)
    numbers = [int(n) for n in seg.segment_numbers]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    stack = None
    if any(s.sop_instance_uid in referenced for s in volume.slices):
        try:
            stack = _by_source(seg, volume, referenced, numbers, path)
        except RuntimeError:
            # highdicom refuses source indexing when the SEG does not state that spatial
            # locations are preserved (dcmqi omits it): place the frames by geometry instead.
            stack = None
    if stack is None:
        stack = _by_geometry(seg, volume, numbers, path)
    return {n: stack[..., k] for k, n in enumerate(numbers)}


def _open(path: Path) -> hd.seg.Segmentation:
    """The SEG at ``path``, or an error naming the file."""
    try:
        return hd.seg.segread(path)
    except (InvalidDicomError, OSError, AttributeError, KeyError, ValueError) as e:
        raise DicomInputError(f"{path}: not a readable DICOM SEG ({e})") from e


def _check_frame_of_reference(seg: hd.seg.Segmentation, volume: Volume, path: Path) -> None:
    """The SEG and the volume's first source image must share a FrameOfReferenceUID."""
    source = volume.slices[0].path
    try:
        header = pydicom.dcmread(source, stop_before_pixels=True,
                                 specific_tags=["FrameOfReferenceUID"])
    except (InvalidDicomError, OSError) as e:
        raise DicomInputError(f"source image {source} - cannot read its header: {e}") from e
    ours, theirs = header.get("FrameOfReferenceUID"), seg.get("FrameOfReferenceUID")
    if ours and theirs and str(ours) != str(theirs):
        raise DicomInputError(
            f"{path}: frame of reference {theirs} differs from series "
            f"{volume.series_instance_uid}'s {ours}"
        )


def _by_source(
    seg: hd.seg.Segmentation, volume: Volume, referenced: set[str], numbers: list[int],
    path: Path,
) -> np.ndarray:
    """(slices, rows, columns, segments) bool array placed by referenced source image/frame."""
    stack = np.zeros((*volume.array.shape, len(numbers)), dtype=bool)
    wanted = [(i, s) for i, s in enumerate(volume.slices) if s.sop_instance_uid in referenced]
    single = [(i, s) for i, s in wanted if s.frame_number is None]
    if single:
        pixels = seg.get_pixels_by_source_instance(
            [s.sop_instance_uid for _, s in single], segment_numbers=numbers,
            assert_missing_frames_are_empty=True, rescale_fractional=True,
        )
        _place(stack, [i for i, _ in single], pixels, path)
    for uid in sorted({s.sop_instance_uid for _, s in wanted if s.frame_number is not None}):
        frames = [(i, s.frame_number) for i, s in wanted if s.sop_instance_uid == uid]
        pixels = seg.get_pixels_by_source_frame(
            uid, [f for _, f in frames], segment_numbers=numbers,
            assert_missing_frames_are_empty=True, rescale_fractional=True,
        )
        _place(stack, [i for i, _ in frames], pixels, path)
    return stack


def _place(stack: np.ndarray, indices: list[int], pixels: np.ndarray, path: Path) -> None:
    """Put (n, rows, columns, segments) SEG pixels at slice ``indices`` (fractional: > 0.5)."""
    if pixels.shape[1:3] != stack.shape[1:3]:
        raise DicomInputError(
            f"{path}: SEG frames are {pixels.shape[1:3]}, the series is {stack.shape[1:3]}"
        )
    stack[indices] = pixels > 0.5


def _by_geometry(
    seg: hd.seg.Segmentation, volume: Volume, numbers: list[int], path: Path
) -> np.ndarray:
    """Place the SEG's own volume on our grid when it references none of the volume's images."""
    try:
        seg_volume = seg.get_volume(segment_numbers=numbers)
    except (RuntimeError, ValueError) as e:
        raise DicomInputError(
            f"{path}: references no image of series {volume.series_instance_uid} and its "
            f"frames do not form a volume ({e})"
        ) from e
    # highdicom's affine maps (slice, row, column) indices; ours (column, row, slice).
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    lps = corners @ seg_volume.affine[:3, :3].T + seg_volume.affine[:3, 3]
    ours = volume.lps_to_index(lps)[:, ::-1]  # -> (slice, row, column)
    origin, steps = ours[0], ours[1:] - ours[0]
    if not (_is_signed_permutation(steps) and np.allclose(origin, np.round(origin),
                                                          atol=_GRID_TOLERANCE)):
        raise DicomInputError(
            f"{path}: references no image of series {volume.series_instance_uid} and its "
            "frames are not on the series' voxel grid"
        )
    array = seg_volume.array if seg_volume.array.ndim == 4 else seg_volume.array[..., None]
    return _paste(array, np.round(origin), np.round(steps), volume.array.shape, numbers, path)


def _is_signed_permutation(steps: np.ndarray) -> bool:
    """True when each row of ``steps`` is, within tolerance, plus or minus a distinct unit axis."""
    rounded = np.round(steps)
    return bool(
        np.allclose(steps, rounded, atol=_GRID_TOLERANCE)
        and np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
        and np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))
    )


def _paste(
    array: np.ndarray,
    origin: np.ndarray,
    steps: np.ndarray,
    shape: tuple[int, ...],
    numbers: list[int],
    path: Path,
) -> np.ndarray:
    """Map the set voxels of a (s, r, c, segments) SEG array onto a (shape, segments) grid."""
    out = np.zeros((*shape, array.shape[-1]), dtype=bool)
    for k in range(array.shape[-1]):
        seg_index = np.argwhere(array[..., k] > 0.5)
        index = (seg_index @ steps + origin).astype(int)
        inside = np.all((index >= 0) & (index < np.array(shape)), axis=1)
        if not np.all(inside):
            raise DicomInputError(
                f"{path}: segment {numbers[k]} has voxels outside the series' volume"
            )
        out[index[:, 0], index[:, 1], index[:, 2], k] = True
    return out


@dataclass(frozen=True)
class SegmentOrigin:
    """The GSPS annotation one segment was segmented from."""

    segment_number: int
    label: str
    gsps_sop_class_uid: str
    gsps_sop_instance_uid: str
    annotation_index: int
    tracking_uid: str


def read_provenance(path: Path) -> list[SegmentOrigin]:
    """Which GSPS annotation each segment of our SEG at ``path`` came from, in segment order.

    The GSPS is the SEG's Source Instance Sequence item of a presentation state class; the
    annotation index is read from the segment's Tracking ID and checked against its Tracking
    UID, which is derived from the (GSPS, index) pair.

    Raises
    ------
    DicomInputError
        Not a readable DICOM file, no single presentation state among its sources, or a segment
        whose tracking does not name an annotation of that GSPS.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        segments = list(ds.SegmentSequence)
    except (InvalidDicomError, OSError, AttributeError) as e:
        raise DicomInputError(f"{path}: not a readable DICOM SEG ({e})") from e
    states = [item for item in ds.get("SourceInstanceSequence", [])
              if str(item.get("ReferencedSOPClassUID", "")).startswith(
                  PRESENTATION_STATE_CLASS_ROOT)]
    if len(states) != 1:
        raise DicomInputError(
            f"{path}: {len(states)} presentation states among its source instances, not one"
        )
    state_class = str(states[0].ReferencedSOPClassUID)
    state_uid = str(states[0].ReferencedSOPInstanceUID)
    return [_origin(item, state_class, state_uid, path) for item in segments]


def _origin(item: pydicom.Dataset, state_class: str, state_uid: str, path: Path
            ) -> SegmentOrigin:
    """One segment's origin, its Tracking ID's index checked against its Tracking UID."""
    number = int(item.SegmentNumber)
    index = annotation_index_of(str(item.get("TrackingID", "")))
    tracking_uid = str(item.get("TrackingUID", ""))
    if index is None or tracking_uid_for(state_uid, index) != tracking_uid:
        raise DicomInputError(
            f"{path}: segment {number} - its Tracking ID and UID name no annotation of GSPS "
            f"{state_uid}"
        )
    return SegmentOrigin(number, str(item.get("SegmentLabel", "")), state_class, state_uid,
                         index, tracking_uid)
