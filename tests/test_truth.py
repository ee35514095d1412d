"""Ground truth on a series' grid: RTSTRUCT (LUNG1), DICOM SEG (dcmqi, highdicom), NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared

from dicom_io.errors import DicomInputError
from dicom_io.nifti import write_nifti
from dicom_io.truth import read_truth
from dicom_io.volume import SliceSource, Volume, load_series


@pytest.fixture(scope="module")
def lung1_volume(lung1_001: Path) -> Volume:
    return load_series(lung1_001 / "ct")


def _small_volume(shape=(4, 10, 12)) -> Volume:
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-100.0, -80.0, 30.0)
    slices = tuple(SliceSource(f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.2", Path(f"{i}.dcm"))
                   for i in range(shape[0]))
    return Volume(np.zeros(shape, np.float32), affine, "1.2.3", "1.2.3.9", slices)


def test_rtstruct_gtv_of_lung1(lung1_001: Path, lung1_volume: Volume):
    mask = read_truth(lung1_001 / "rtstruct.dcm", lung1_volume, "GTV-1")
    assert mask.shape == lung1_volume.array.shape and mask.dtype == bool
    ml = mask.sum() * np.prod(lung1_volume.spacing) / 1000
    assert 140 < ml < 170  # GTV-1 of LUNG1-001 is about 156 mL
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    assert np.all(np.diff(slices) == 1), "one contiguous tumour"
    # the contour polygon's vertices land on the mask's boundary: check one contour point
    ds = pydicom.dcmread(lung1_001 / "rtstruct.dcm")
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "GTV-1")
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == number)
    xyz = np.asarray(item.ContourSequence[len(item.ContourSequence) // 2].ContourData, float)
    col, row, slc = lung1_volume.lps_to_index(xyz.reshape(-1, 3)).mean(axis=0)
    assert mask[int(round(slc)), int(round(row)), int(round(col))]
    assert float(np.mean(lung1_volume.array[mask])) > -300, "the GTV is soft tissue, not lung"


def test_unknown_roi_lists_the_available_names(lung1_001: Path, lung1_volume: Volume):
    with pytest.raises(DicomInputError, match="no ROI named 'GTV-9'") as info:
        read_truth(lung1_001 / "rtstruct.dcm", lung1_volume, "GTV-9")
    assert "GTV-1" in str(info.value) and "Spinal cord" in str(info.value)


def test_nifti_round_trip(tmp_path: Path):
    vol = _small_volume()
    mask = np.zeros(vol.array.shape, dtype=bool)
    mask[1:3, 2:6, 3:9] = True
    path = write_nifti(mask, vol.affine, tmp_path / "truth.nii.gz")
    np.testing.assert_array_equal(read_truth(path, vol), mask)
    labels = mask.astype(np.uint8) * 2
    labels[0, 0, 0] = 1
    write_nifti(labels, vol.affine, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(read_truth(tmp_path / "labels.nii.gz", vol, "2"), mask)


def test_nifti_on_another_grid_is_refused(tmp_path: Path):
    vol = _small_volume()
    shifted = vol.affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(np.ones(vol.array.shape, np.uint8), shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(ValueError, match="grid"):
        read_truth(tmp_path / "shifted.nii.gz", vol)
    write_nifti(np.ones((4, 10, 11), np.uint8), vol.affine, tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        read_truth(tmp_path / "small.nii.gz", vol)


def test_dcmqi_seg_by_label():
    ct = load_series(shared("seg/dcmqi/ct-3slice"))
    mask = read_truth(shared("seg/dcmqi/liver.dcm"), ct, "Liver")
    assert mask.shape == ct.array.shape
    assert mask.sum(axis=(1, 2)).min() > 30000  # the liver is on all three slices
    np.testing.assert_array_equal(read_truth(shared("seg/dcmqi/liver.dcm"), ct, None), mask)
    with pytest.raises(DicomInputError, match="available: \\['Liver'\\]"):
        read_truth(shared("seg/dcmqi/liver.dcm"), ct, "Spleen")


@pytest.mark.filterwarnings("ignore:The string:UserWarning")  # the source's one-part name
def test_highdicom_seg_round_trip(tmp_path: Path):
    """A SEG written by highdicom over the dcmqi CT slices reads back voxel for voxel."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ct = load_series(shared("seg/dcmqi/ct-3slice"))
    sources = [pydicom.dcmread(s.path) for s in ct.slices]
    for ds in sources:  # these GE slices carry an empty SpecificCharacterSet highdicom rejects
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    mask = np.zeros(ct.array.shape, dtype=bool)
    mask[0, 100:180, 200:260] = True
    mask[2, 300:320, 10:50] = True
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lesion 1",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    seg.save_as(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_truth(tmp_path / "seg.dcm", ct, "Lesion 1"), mask)


def test_bad_truth_files(tmp_path: Path):
    vol = _small_volume()
    with pytest.raises(FileNotFoundError):
        read_truth(tmp_path / "missing.dcm", vol)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(DicomInputError, match="junk.dcm"):
        read_truth(junk, vol)
    ct_slice = next(iter(sorted(shared("seg/dcmqi/ct-3slice").glob("*.dcm"))))
    with pytest.raises(DicomInputError, match="neither RTSTRUCT nor SEG"):
        read_truth(ct_slice, vol)


def _rtstruct(vol: Volume, contours_by_roi: dict[str, list[np.ndarray]]) -> pydicom.Dataset:
    """A minimal in-memory RTSTRUCT; contours given as (N, 3) voxel (column, row, slice) points."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(contours_by_roi.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for points in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(points)
            c.ContourData = [round(float(v), 4) for v in vol.index_to_lps(points).ravel()]
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    return ds


def _square(c0, r0, c1, r1, z) -> np.ndarray:
    return np.array([[c0, r0, z], [c1, r0, z], [c1, r1, z], [c0, r1, z]], dtype=float)


def test_rtstruct_inner_contour_is_a_hole():
    from dicom_io.truth import rtstruct_mask

    vol = _small_volume((3, 20, 20))
    ds = _rtstruct(vol, {"ring": [_square(2, 2, 16, 16, 1), _square(6, 6, 11, 11, 1)],
                         "other": [_square(0, 0, 3, 3, 0)]})
    mask = rtstruct_mask(ds, vol, "ring")
    assert not mask[0].any() and not mask[2].any()
    assert mask[1, 4, 4] and not mask[1, 8, 8], "the inner contour cuts a hole"
    assert mask[1].sum() == 14 * 14 - 5 * 5  # pixel centres strictly inside each square
    with pytest.raises(DicomInputError, match="choose an ROI"):
        rtstruct_mask(ds, vol, None)


def test_rtstruct_contour_between_slices_is_refused():
    from dicom_io.truth import rtstruct_mask

    vol = _small_volume((3, 20, 20))
    ds = _rtstruct(vol, {"GTV": [_square(2, 2, 8, 8, 0.5)]})
    with pytest.raises(DicomInputError, match="does not lie on a slice"):
        rtstruct_mask(ds, vol, "GTV")
