"""CT series -> Volume: real LUNG1 slices, copies of them with edited headers, compressed copies."""

from __future__ import annotations

import copy
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicom_io.errors import DicomInputError
from dicom_io.volume import Volume, load_series

PATIENT_MARK = "Doe^Jane^Secret"  # written into copies; must never appear in a message


def _ct_files(case: str = "LUNG1-001") -> list[Path]:
    """The real CT slices of a LUNG1 case, sorted by file name."""
    return sorted(shared(f"lung1/{case}/ct").glob("*.dcm"))


def _sorted_headers(case: str = "LUNG1-001") -> list[Dataset]:
    """The full datasets of a LUNG1 case ordered by z (ascending)."""
    datasets = [pydicom.dcmread(p) for p in _ct_files(case)]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def lung_slices() -> list[Dataset]:
    """Six consecutive LUNG1-001 slices from the middle of the series, ascending z."""
    return _sorted_headers()[60:66]


def _write(datasets: list[Dataset], folder: Path, prefix: str = "im") -> list[Path]:
    """Write copies (patient name replaced by a marker) under ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        copy = pydicom.dcmread(DicomBytesIO(_to_bytes(ds)))
        copy.PatientName = PATIENT_MARK
        path = folder / f"{prefix}{i:03d}.dcm"
        copy.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _to_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _clone(ds: Dataset) -> Dataset:
    """An independent copy (``Dataset(ds)`` would share the elements)."""
    return copy.deepcopy(ds)


def _hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _error(source: object, **kwargs: object) -> str:
    """The message of the DicomInputError that loading ``source`` raises (patient-free)."""
    with pytest.raises(DicomInputError) as info:
        load_series(source, **kwargs)
    message = str(info.value)
    assert PATIENT_MARK not in message and "Secret" not in message
    return message


# ---------------------------------------------------------------- real series


@pytest.mark.slow
def test_lung1_geometry_and_hu_match_simpleitk() -> None:
    folder = shared("lung1/LUNG1-001/ct")
    vol = load_series(folder)
    assert vol.array.shape == (134, 512, 512) and vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((3.0, 0.977, 0.977), abs=1e-3)
    assert vol.warnings == ()
    first = pydicom.dcmread(vol.slices[0].path, stop_before_pixels=True)
    last = pydicom.dcmread(vol.slices[-1].path, stop_before_pixels=True)
    assert np.allclose(vol.index_to_lps([[0, 0, 0]])[0], first.ImagePositionPatient)
    assert np.allclose(vol.index_to_lps([[0, 0, 133]])[0], last.ImagePositionPatient)
    assert float(first.ImagePositionPatient[2]) < float(last.ImagePositionPatient[2])
    assert vol.slice_of_sop(str(last.SOPInstanceUID)) == 133
    assert vol.slice_of_sop("1.2.3.4") is None
    assert vol.study_instance_uid == first.StudyInstanceUID
    # SimpleITK's GDCM-sorted reader is the peer: same voxels, same origin and direction.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), vol.array)
    assert np.allclose(image.GetOrigin(), vol.affine[:3, 3])
    assert np.allclose(image.GetSpacing(), vol.spacing[::-1], atol=1e-4)


def test_lung1_parent_folder_ignores_rtstruct_and_round_trips_indices(lung_slices) -> None:
    vol = load_series(shared("lung1/LUNG1-002"))  # ct/ plus rtstruct.dcm
    assert vol.array.shape == (111, 512, 512)
    index = np.array([[10.0, 20.0, 3.0], [500.0, 3.0, 100.0]])
    assert np.allclose(vol.lps_to_index(vol.index_to_lps(index)), index)


def test_other_vendor_ct_three_slices() -> None:
    vol = load_series(shared("seg/dcmqi/ct-3slice"))
    assert vol.array.shape == (3, 512, 512)
    ref = pydicom.dcmread(vol.slices[1].path)
    assert np.array_equal(vol.array[1], _hu(ref))


# ---------------------------------------------------------------- inputs and selection


def test_file_list_in_any_order_is_sorted_along_normal(tmp_path, lung_slices) -> None:
    paths = _write(lung_slices, tmp_path)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    vol = load_series(shuffled)
    assert [s.path for s in vol.slices] == paths
    assert np.array_equal(vol.array[2], _hu(lung_slices[2]))
    single = load_series(str(paths[0]))
    assert single.array.shape == (1, 512, 512)
    assert single.warnings == (
        f"series {single.series_instance_uid}: single slice, slice step set to 3 mm",
    )
    assert single.spacing[0] == pytest.approx(3.0)


def test_non_dicom_files_and_dicomdir_are_skipped(tmp_path, lung_slices) -> None:
    with_ids = [_clone(ds) for ds in lung_slices]
    for ds in with_ids:
        ds.StudyID = "1"  # FileSet's default STUDY record needs one
    paths = _write(with_ids, tmp_path / "staging")
    fileset = FileSet()
    for path in paths:
        fileset.add(path)
    media = tmp_path / "media"
    fileset.write(media)
    (media / "README.txt").write_text("not dicom\n")
    (media / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert (media / "DICOMDIR").exists()
    vol = load_series(media)
    assert vol.array.shape == (6, 512, 512)


def test_mixed_series_choose_by_uid_or_refuse(tmp_path, lung_slices) -> None:
    other = _sorted_headers("LUNG1-002")[50:54]
    _write(lung_slices, tmp_path, "a")
    _write(other, tmp_path, "b")
    message = _error(tmp_path)
    assert "ambiguous" in message and "2 CT series" in message
    vol = load_series(tmp_path, other[0].SeriesInstanceUID)
    assert vol.array.shape[0] == 4 and vol.series_instance_uid == other[0].SeriesInstanceUID
    assert "not found among 2 series" in _error(tmp_path, series_instance_uid="1.2.3.999")


def test_empty_and_missing_sources(tmp_path) -> None:
    assert "no DICOM images" in _error(tmp_path)
    (tmp_path / "README").write_text("hello")
    assert "no DICOM images" in _error(tmp_path)
    assert "no such file" in _error(tmp_path / "absent")
    assert "no such file" in _error([tmp_path / "absent.dcm"])
    assert "no DICOM images" in _error([])


def test_localizers_left_out_of_series_and_folder(tmp_path, lung_slices) -> None:
    scout = _clone(lung_slices[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SOPInstanceUID = generate_uid()
    _write([*lung_slices, scout], tmp_path / "mixed")
    vol = load_series(tmp_path / "mixed")
    assert vol.array.shape[0] == 6 and "1 localizer image(s) left out" in vol.warnings[0]
    scout.SeriesInstanceUID = generate_uid()
    _write(lung_slices, tmp_path / "two")
    _write([scout], tmp_path / "two", "scout")
    assert load_series(tmp_path / "two").series_instance_uid == lung_slices[0].SeriesInstanceUID
    assert "only localizer images" in _error(
        tmp_path / "two", series_instance_uid=scout.SeriesInstanceUID
    )


# ---------------------------------------------------------------- non-CT input


@pytest.mark.parametrize(
    ("relative", "modality"),
    [
        ("gsps/meddream/CR000000.dcm", "CR"),
        ("gsps/meddream/PR000000.dcm", "PR"),
        ("gsps/clearcanvas/real01.dcm", "OT"),
        ("seg/dcmqi/liver.dcm", "SEG"),
    ],
)
def test_non_ct_objects_are_refused_with_modality(relative, modality) -> None:
    path = shared(relative)
    message = _error(path)
    assert f"modality {modality}" in message and "not a CT" in message and str(path) in message


def test_mr_series_refused_and_only_mr_folder_names_modalities(tmp_path, lung_slices) -> None:
    mr = [_clone(ds) for ds in lung_slices[:2]]
    series_uid = generate_uid()
    for ds in mr:
        ds.SeriesInstanceUID = series_uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.Modality = "MR"
    _write(mr, tmp_path / "mr")
    assert "modality MR" in _error(tmp_path / "mr")
    shutil.copy(shared("seg/dcmqi/liver.dcm"), tmp_path / "mr" / "seg.dcm")
    message = _error(tmp_path / "mr")
    assert "no CT series among 2 series" in message and "MR" in message and "SEG" in message
    _write(lung_slices, tmp_path / "mr", "ct")
    assert load_series(tmp_path / "mr").array.shape[0] == 6
    message = _error(tmp_path / "mr", series_instance_uid=mr[0].SeriesInstanceUID)
    assert "modality MR" in message


def test_corrupt_files_are_named(tmp_path, lung_slices) -> None:
    (path,) = _write(lung_slices[:1], tmp_path / "pixels")
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    message = _error(tmp_path / "pixels")
    assert str(path) in message and "cannot be decoded" in message
    (tmp_path / "header").mkdir()
    (tmp_path / "header" / "cut.dcm").write_bytes(data[: data.rfind(b"\xe0\x7f\x10\x00")])
    assert "without pixel data" in _error(tmp_path / "header")
    (tmp_path / "header" / "cut.dcm").write_bytes(data[:600])
    assert "no SeriesInstanceUID" in _error(tmp_path / "header")


def test_missing_geometry_is_named(tmp_path, lung_slices) -> None:
    ds = _clone(lung_slices[0])
    del ds.ImagePositionPatient
    (path,) = _write([ds], tmp_path)
    message = _error(tmp_path)
    assert "missing or invalid geometry" in message and str(path) in message
    ds = _clone(lung_slices[0])
    ds.ImageOrientationPatient = [1, 0, 0]
    _write([ds], tmp_path)
    assert "ImageOrientationPatient 6, got 3 and 3" in _error(tmp_path)


# ---------------------------------------------------------------- slice positions


def test_identical_duplicate_kept_once(tmp_path, lung_slices) -> None:
    paths = _write(lung_slices, tmp_path)
    shutil.copy(paths[3], tmp_path / "copy.dcm")
    vol = load_series(tmp_path)
    assert vol.array.shape[0] == 6
    assert any("duplicate" in w for w in vol.warnings)


def test_conflicting_duplicate_refused(tmp_path, lung_slices) -> None:
    _write(lung_slices, tmp_path)
    clash = _clone(lung_slices[3])
    clash.SOPInstanceUID = generate_uid()
    array = clash.pixel_array.copy()
    array[100, 100] += 7
    clash.PixelData = array.tobytes()
    _write([clash], tmp_path, "clash")
    message = _error(tmp_path)
    assert "two different slices at the same position" in message


def test_missing_slice_warns_and_uses_mean_step(tmp_path, lung_slices, caplog) -> None:
    paths = _write(lung_slices, tmp_path)
    paths[2].unlink()
    with caplog.at_level(logging.WARNING, logger="dicom_io.volume"):
        vol = load_series(tmp_path)
    assert vol.array.shape[0] == 5
    (warning,) = vol.warnings
    assert "1 gap(s)" in warning and "mean step 3.750" in warning and "deviation 2.250" in warning
    assert warning in caplog.text
    last = lung_slices[-1].ImagePositionPatient
    assert np.allclose(vol.index_to_lps([[0, 0, 4]])[0], last)


def test_non_uniform_spacing_warns(tmp_path, lung_slices) -> None:
    edited = [_clone(ds) for ds in lung_slices]
    edited[3].ImagePositionPatient = [
        *lung_slices[3].ImagePositionPatient[:2],
        float(lung_slices[3].ImagePositionPatient[2]) + 0.6,
    ]
    _write(edited, tmp_path)
    (warning,) = load_series(tmp_path).warnings
    assert "non-uniform slice spacing" in warning and "deviation 0.600" in warning


def test_gantry_tilt_gives_sheared_affine(tmp_path, lung_slices) -> None:
    tilt = np.radians(15.0)
    edited = []
    for i, src in enumerate(lung_slices):
        ds = _clone(src)
        x, y, z = (float(v) for v in src.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + i * 3.0 * np.tan(tilt), 4), z]
        ds.GantryDetectorTilt = 15.0
        edited.append(ds)
    _write(edited, tmp_path)
    vol = load_series(tmp_path)
    (warning,) = vol.warnings
    assert "gantry tilt" in warning and "15.00 deg" in warning
    assert vol.affine[1, 2] == pytest.approx(3.0 * np.tan(tilt), abs=1e-3)
    assert vol.affine[2, 2] == pytest.approx(3.0)
    assert np.allclose(vol.index_to_lps([[0, 0, 5]])[0], edited[5].ImagePositionPatient)


def test_tilted_orientation_with_table_steps_is_sheared(tmp_path, lung_slices) -> None:
    """The usual tilt encoding: tilted image plane, positions stepping along the table (z)."""
    tilt = np.radians(-20.0)
    edited = []
    for src in lung_slices:
        ds = _clone(src)
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(np.cos(tilt), 6), round(np.sin(tilt), 6)]
        edited.append(ds)
    _write(edited, tmp_path)
    vol = load_series(tmp_path)
    (warning,) = vol.warnings
    assert "gantry tilt" in warning and "20.00 deg" in warning
    assert np.allclose(vol.affine[:3, 2], [0.0, 0.0, 3.0])
    assert np.allclose(vol.affine[:3, 1], [0, np.cos(tilt) * 0.9765625, np.sin(tilt) * 0.9765625])
    first, last = edited[0].ImagePositionPatient, edited[-1].ImagePositionPatient
    assert np.allclose(vol.index_to_lps([[0, 0, 0], [0, 0, 5]]), [first, last])


def test_same_height_shifted_in_plane_refused(tmp_path, lung_slices) -> None:
    shifted = _clone(lung_slices[2])
    shifted.SOPInstanceUID = generate_uid()
    x, y, z = (float(v) for v in shifted.ImagePositionPatient)
    shifted.ImagePositionPatient = [x + 5.0, y, z]
    _write([*lung_slices, shifted], tmp_path)
    assert "same height along the normal but shifted in plane" in _error(tmp_path)


def test_sagittal_series_ordered_along_its_normal(tmp_path, lung_slices) -> None:
    sagittal = []
    for i, src in enumerate(lung_slices[:4]):
        ds = _clone(src)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # normal = -x (towards patient right)
        ds.ImagePositionPatient = [10.0 + 2.0 * i, -100.0, 50.0]
        sagittal.append(ds)
    paths = _write(sagittal, tmp_path)
    vol = load_series(tmp_path)
    assert vol.warnings == ()
    assert [s.path for s in vol.slices] == paths[::-1]
    assert np.allclose(vol.affine[:3, 2], [-2.0, 0.0, 0.0])
    assert np.allclose(vol.affine[:3, 0], [0.0, 0.9765625, 0.0])
    assert np.allclose(vol.affine[:3, 1], [0.0, 0.0, -0.9765625])
    assert np.linalg.det(vol.affine[:3, :3]) > 0


def test_rescale_slope_applied(tmp_path, lung_slices) -> None:
    ds = _clone(lung_slices[0])
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -1000.0
    _write([ds], tmp_path)
    vol = load_series(tmp_path)
    assert np.array_equal(vol.array[0], ds.pixel_array.astype(np.float32) * 2 - 1000)


def test_mixed_image_sizes_refused(tmp_path, lung_slices) -> None:
    small = _clone(lung_slices[1])
    small.PixelData = small.pixel_array[:256, :256].copy().tobytes()
    small.Rows = small.Columns = 256
    _write([lung_slices[0], small], tmp_path)
    assert "mixed image sizes" in _error(tmp_path)


# ---------------------------------------------------------------- enhanced and compressed


def test_legacy_converted_enhanced_ct_frames(tmp_path, lung_slices) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    shuffled = [lung_slices[i] for i in (2, 0, 5, 1, 4, 3)]
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=shuffled,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    vol = load_series(path)
    single = load_series(_write(lung_slices, tmp_path / "single"))
    assert np.array_equal(vol.array, single.array)
    assert np.allclose(vol.affine, single.affine)
    assert all(s.frame_number is not None for s in vol.slices)
    assert {s.sop_class_uid for s in vol.slices} == {"1.2.840.10008.5.1.4.1.1.2.2"}
    for frame_number in range(1, 7):
        index = vol.slice_of_sop(str(enhanced.SOPInstanceUID), frame_number)
        assert vol.slices[index].frame_number == frame_number
    heights = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in enhanced.PerFrameFunctionalGroupsSequence
    ]
    assert [s.frame_number for s in vol.slices] == list(np.argsort(heights) + 1)


def test_enhanced_per_frame_rescale_and_missing_position(tmp_path, lung_slices) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=lung_slices[:3],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -2048, "HU"
    enhanced.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence = [rescale]
    enhanced.save_as(tmp_path / "enhanced.dcm")
    vol = load_series(tmp_path / "enhanced.dcm")
    index = vol.slice_of_sop(str(enhanced.SOPInstanceUID), 1)
    stored = enhanced.pixel_array[0].astype(np.float32)
    assert np.array_equal(vol.array[index], stored * 2 - 2048)
    del enhanced.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    enhanced.save_as(tmp_path / "broken.dcm")
    assert "frame 2 lacks plane position" in _error(tmp_path / "broken.dcm")


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_to_same_hu(tmp_path, lung_slices, syntax) -> None:
    compressed = []
    for src in lung_slices[:3]:
        ds = pydicom.dcmread(DicomBytesIO(_to_bytes(src)))
        ds.compress(syntax)
        compressed.append(ds)
    paths = _write(compressed, tmp_path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = load_series(tmp_path)
    expected = np.stack([_hu(ds) for ds in lung_slices[:3]])
    assert np.array_equal(vol.array, expected)


def test_volume_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="sources for 2 slices"):
        Volume(np.zeros((2, 3, 3), np.float32), np.eye(4), "1", "2", slices=())
