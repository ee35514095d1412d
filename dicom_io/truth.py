"""Ground-truth masks on a volume's grid: from an RTSTRUCT ROI, a DICOM SEG segment or a NIfTI label.

``read_truth(path, volume, roi)`` returns a boolean array (slices, rows, columns) aligned with
``volume.array``; the format is recognised from the file itself.

Example
-------
>>> truth = read_truth("rtstruct.dcm", volume, "GTV-1")  # doctest: +SKIP
>>> truth.shape == volume.array.shape  # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon

from dicom_io.errors import DicomInputError
from dicom_io.volume import Volume

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A contour point may sit this far (in slice units) from a slice centre and still belong to it.
_SLICE_TOLERANCE = 0.25


def read_truth(path: str | Path, volume: Volume, roi: str | None = None) -> np.ndarray:
    """Read a ground-truth mask for ``volume`` from an RTSTRUCT, a DICOM SEG or a NIfTI file.

    ``roi`` names the RTSTRUCT ROI or the SEG segment label; it may be omitted when the file holds
    a single structure (NIfTI: any non-zero voxel, or the label value when ``roi`` is an integer).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth file not found: {path}")
    if path.name.endswith(_NIFTI_SUFFIXES):
        return read_nifti_truth(path, volume, roi)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise DicomInputError(f"{path}: not a DICOM or NIfTI file ({exc})") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == RTSTRUCT_SOP_CLASS:
        return rtstruct_mask(ds, volume, roi, path)
    if sop_class == SEG_SOP_CLASS:
        return seg_mask(ds, volume, roi, path)
    raise DicomInputError(f"{path}: SOP class {sop_class or 'missing'} is neither RTSTRUCT nor SEG")


def rtstruct_mask(
    ds: pydicom.Dataset, volume: Volume, roi: str | None, path: Path | str = "RTSTRUCT"
) -> np.ndarray:
    """Fill the closed planar contours of ROI ``roi`` slice by slice (nested contours are holes)."""
    number = _roi_number(ds, roi, path)
    contours = _contours_of(ds, number)
    if not contours:
        raise DicomInputError(f"{path}: ROI '{roi}' has no contours")
    mask = np.zeros(volume.array.shape, dtype=bool)
    for data in contours:
        _fill_contour(mask, volume, data, path)
    return mask


def _roi_number(ds: pydicom.Dataset, roi: str | None, path: Path | str) -> int:
    names = {
        str(item.ROIName): int(item.ROINumber) for item in ds.get("StructureSetROISequence", [])
    }
    if roi is None:
        if len(names) != 1:
            raise DicomInputError(f"{path}: choose an ROI (--roi), available: {sorted(names)}")
        return next(iter(names.values()))
    if roi not in names:
        raise DicomInputError(f"{path}: no ROI named '{roi}', available: {sorted(names)}")
    return names[roi]


def _contours_of(ds: pydicom.Dataset, number: int) -> list[np.ndarray]:
    for item in ds.get("ROIContourSequence", []):
        if int(item.ReferencedROINumber) == number:
            return [
                np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
                for c in item.get("ContourSequence", [])
                if c.get("ContourGeometricType", "CLOSED_PLANAR") == "CLOSED_PLANAR"
            ]
    return []


def _fill_contour(mask: np.ndarray, volume: Volume, lps: np.ndarray, path: Path | str) -> None:
    """XOR one contour's filled polygon into the slice it lies on (so inner contours cut holes)."""
    index = volume.lps_to_index(lps)
    slice_f = float(np.mean(index[:, 2]))
    k = int(round(slice_f))
    if abs(slice_f - k) > _SLICE_TOLERANCE or not 0 <= k < mask.shape[0]:
        raise DicomInputError(
            f"{path}: a contour at slice position {slice_f:.2f} does not lie on a slice of the series"
        )
    rr, cc = polygon(index[:, 1], index[:, 0], shape=mask.shape[1:])
    filled = np.zeros(mask.shape[1:], dtype=bool)
    filled[rr, cc] = True
    mask[k] ^= filled


def seg_mask(
    ds: pydicom.Dataset, volume: Volume, roi: str | None, path: Path | str = "SEG"
) -> np.ndarray:
    """The frames of segment ``roi`` (by label) placed on the volume's slices by source SOP UID."""
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, KeyError) as exc:
        raise DicomInputError(f"{path}: not a readable DICOM SEG ({exc})") from exc
    number = _segment_number(seg, roi, path)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    wanted = [
        (i, s.sop_instance_uid)
        for i, s in enumerate(volume.slices)
        if s.sop_instance_uid in referenced
    ]
    if not wanted:
        raise DicomInputError(
            f"{path}: the SEG references no image of series {volume.series_instance_uid}"
        )
    try:  # dcmqi does not write SpatialLocationsPreserved: the frame size is checked below
        pixels = seg.get_pixels_by_source_instance(
            [uid for _, uid in wanted], segment_numbers=[number],
            assert_missing_frames_are_empty=True, ignore_spatial_locations=True,
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        raise DicomInputError(f"{path}: cannot place segment '{roi}' on the series ({exc})") from exc
    if pixels.shape[1:3] != volume.array.shape[1:]:
        raise DicomInputError(
            f"{path}: SEG frames are {pixels.shape[1:3]}, the series is {volume.array.shape[1:]}"
        )
    mask = np.zeros(volume.array.shape, dtype=bool)
    mask[[i for i, _ in wanted]] = pixels[..., 0] > 0
    return mask


def _segment_number(seg, roi: str | None, path: Path | str) -> int:
    labels = {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}
    if roi is None:
        if len(labels) != 1:
            raise DicomInputError(f"{path}: choose a segment (--roi), available: {sorted(labels)}")
        return next(iter(labels.values()))
    if roi not in labels:
        raise DicomInputError(f"{path}: no segment labelled '{roi}', available: {sorted(labels)}")
    return labels[roi]


def read_nifti_truth(path: Path, volume: Volume, roi: str | None = None) -> np.ndarray:
    """A NIfTI label on exactly the volume's grid (same shape, affine within 0.01 mm)."""
    from dicom_io.nifti import read_nifti  # SimpleITK, needed for NIfTI truth only

    array, affine = read_nifti(path)
    if array.shape != volume.array.shape:
        raise ValueError(
            f"{path}: NIfTI shape {array.shape} does not match the series {volume.array.shape}"
        )
    if not np.allclose(affine, volume.affine, atol=1e-2):
        raise ValueError(
            f"{path}: NIfTI grid (origin, spacing, direction) does not match the series"
        )
    if roi is not None and roi.isdigit():
        return array == int(roi)
    return array > 0
