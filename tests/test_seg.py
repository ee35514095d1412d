"""Masks -> DICOM SEG over real LUNG1-001: dciodvfy, highdicom and dcmqi read-back (display colours
in sRGB range), the GSPS referenced as source, determinism, a multi-frame source, dcmqi's own
SEG, segment labels, and PNG previews."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import dciodvfy_errors, shared
from PIL import Image

from dicom_io.errors import DicomInputError
from dicom_io.gsps import Annotation, read_presentation_state
from dicom_io.seg import (
    AlgorithmFamily,
    AlgorithmSpec,
    CtWindow,
    PresentationStateRef,
    SegmentSpec,
    annotation_index_of,
    choose_window,
    read_provenance,
    read_seg_masks,
    render_preview,
    segment_label,
    tracking_id_for,
    tracking_uid_for,
    write_seg,
)
from dicom_io.seg.content import series_number_for
from dicom_io.seg.preview import SIZE, TITLE_PX
from dicom_io.truth import read_truth
from dicom_io.volume import Volume, load_series

REPO = Path(__file__).resolve().parents[1]
GSPS_UID = "1.2.826.0.1.3680043.8.498.1111"
GSPS_SERIES = "1.2.826.0.1.3680043.8.498.1110"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
NOTE = "fallback: no SAM2CT checkpoint configured"
CLASSICAL = AlgorithmSpec("classical", "1.0.0", note=NOTE)
SHA = "ab" * 32
LONG_UID = "1.2.826.0.1.3680043.8.498." + "1234567890" * 3 + "12345678"  # 64 characters


def _dcmqi(tool: str) -> str:
    """Path of a dcmqi command-line tool from the virtualenv (or PATH)."""
    exe = REPO / ".venv" / "bin" / tool
    found = str(exe) if exe.exists() else shutil.which(tool)
    if found is None:
        pytest.skip(f"dcmqi tool {tool} is not installed")
    return found


def _sphere(volume: Volume, centre_index: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """A ball of ``radius_mm`` around a (slice, row, column) index, on the volume grid."""
    axes = np.ogrid[tuple(slice(0, n) for n in volume.array.shape)]
    distance2 = sum(((a - c) * s) ** 2 for a, c, s in zip(axes, centre_index, volume.spacing,
                                                           strict=True))
    return distance2 <= radius_mm**2


@pytest.fixture(scope="module")
def lung_volume(lung1_001: Path) -> Volume:
    return load_series(lung1_001 / "ct")


@pytest.fixture(scope="module")
def gtv(lung1_001: Path, lung_volume: Volume) -> np.ndarray:
    return read_truth(lung1_001 / "rtstruct.dcm", lung_volume, "GTV-1")


@pytest.fixture(scope="module")
def sphere(lung_volume: Volume) -> np.ndarray:
    """A 12 mm-radius lesion-sized ball away from the GTV."""
    return _sphere(lung_volume, (60, 250, 150), 12.0)


@pytest.fixture(scope="module")
def specs() -> list[SegmentSpec]:
    return [
        SegmentSpec.for_annotation(GSPS_UID, 0, "line", "line 98.3 mm"),
        SegmentSpec.for_annotation(GSPS_UID, 3, "arrow", "arrow"),
    ]


@pytest.fixture(scope="module")
def state(lung_volume) -> PresentationStateRef:
    """A GSPS of LUNG1-001's study (as a viewer would have stored it there)."""
    return PresentationStateRef(GSPS_CLASS, GSPS_UID, GSPS_SERIES,
                                lung_volume.study_instance_uid, "FOR_PRESENTATION",
                                "2008-03-01 10:15")


@pytest.fixture(scope="module")
def seg_path(tmp_path_factory, lung_volume, gtv, sphere, specs, state) -> Path:
    """One SEG with two segments (the GTV and a ball) over LUNG1-001."""
    out = tmp_path_factory.mktemp("seg")
    return write_seg(lung_volume, [gtv, sphere], specs, CLASSICAL, out, presentation_state=state)


def test_seg_passes_dciodvfy(seg_path: Path) -> None:
    assert dciodvfy_errors(seg_path) == []


def test_seg_reads_back_voxel_for_voxel_with_highdicom(seg_path, lung_volume, gtv, sphere):
    masks = read_seg_masks(seg_path, lung_volume)
    assert sorted(masks) == [1, 2]
    assert masks[1].dtype == bool and masks[1].shape == lung_volume.array.shape
    assert np.array_equal(masks[1], gtv)
    assert np.array_equal(masks[2], sphere)


def _nifti_on_grid(path: Path, volume: Volume) -> np.ndarray:
    """A dcmqi NIfTI (only the frames that exist) pasted into the volume grid through LPS."""
    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image)  # (z, y, x)
    zyx = np.argwhere(labels > 0)
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = (zyx[:, ::-1] * np.array(image.GetSpacing())) @ direction.T + origin
    index = volume.lps_to_index(lps)  # (column, row, slice)
    assert np.allclose(index, np.round(index), atol=0.05), "dcmqi grid is off the volume's grid"
    col, row, slc = np.round(index).astype(int).T
    out = np.zeros(volume.array.shape, dtype=np.int32)
    out[slc, row, col] = labels[tuple(zyx.T)]
    return out


def test_seg_reads_back_voxel_for_voxel_with_dcmqi(seg_path, lung_volume, gtv, sphere, specs,
                                                   tmp_path):
    run = subprocess.run(
        [_dcmqi("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory",
         str(tmp_path), "--outputType", "nii"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    expected = {specs[0].label: gtv, specs[1].label: sphere}
    seen = set()
    for group, attributes in enumerate(meta["segmentAttributes"], start=1):
        labels = _nifti_on_grid(tmp_path / f"{group}.nii.gz", lung_volume)
        for item in attributes:
            mask = labels == item["labelID"]
            assert np.array_equal(mask, expected[item["SegmentLabel"]]), item["SegmentLabel"]
            seen.add(item["SegmentLabel"])
    assert seen == set(expected)


def _dcmqi_rgb(seg: Path, out: Path) -> list[list[int]]:
    """The display colour dcmqi (so 3D Slicer) gives each segment, from its meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [_dcmqi("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(out),
         "--outputType", "nii"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    return [item["recommendedDisplayRGBValue"] for group in meta["segmentAttributes"]
            for item in group]


def test_dcmqi_reads_every_display_colour_in_srgb_range(lung_volume, sphere, tmp_path):
    """Seven segments: the whole palette and its first colour again; dcmqi's own CIELab -> RGB
    conversion gives each one in 0..255, as highdicom's does, and the colours differ."""
    shifted = [np.roll(sphere, 30 * k, axis=2) for k in range(7)]
    specs = [SegmentSpec.for_annotation(GSPS_UID, k, "arrow", f"Lesion {k}") for k in range(7)]
    path = write_seg(lung_volume, shifted, specs, CLASSICAL, tmp_path / "seg")
    rgb = _dcmqi_rgb(path, tmp_path / "dcmqi")
    print("dcmqi RGB per segment:", rgb)
    assert len(rgb) == 7
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in rgb), rgb
    assert len({tuple(c) for c in rgb[:6]}) == 6 and rgb[6] == rgb[0]
    for item, colour in zip(pydicom.dcmread(path).SegmentSequence, rgb, strict=True):
        lab = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue))
        ours = lab.to_rgb()  # raises when out of gamut
        assert max(abs(a - b) for a, b in zip(ours, colour, strict=True)) <= 2, (ours, colour)


def test_seg_content_labels_tracking_algorithm_and_sources(seg_path, lung_volume, specs):
    ds = pydicom.dcmread(seg_path)
    assert seg_path.name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.SegmentationType == "BINARY" and ds.ContentLabel == "LESIONS"
    assert ds.Modality == "SEG"
    assert ds.SeriesNumber == series_number_for(ds.SeriesInstanceUID)
    assert 10_000 <= ds.SeriesNumber <= 99_999
    assert ds.SeriesDescription == (f"Lesions #{ds.SeriesNumber} of FOR_PRESENTATION "
                                    "2008-03-01 10:15 (classical)")
    assert ds.DeviceSerialNumber == "classical 1.0.0"
    assert ds.Manufacturer and ds.ManufacturerModelName and ds.SoftwareVersions
    for item, spec in zip(ds.SegmentSequence, specs, strict=True):
        assert item.SegmentLabel == spec.label
        assert item.TrackingID == spec.tracking_id
        assert item.TrackingUID == spec.tracking_uid
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "classical"
        assert "classical" in algo.AlgorithmVersion
        assert NOTE in algo.AlgorithmParameters
    assert GSPS_UID not in specs[0].tracking_id
    # Source images: the CT series, every frame referencing the slice at its position.
    source = pydicom.dcmread(lung_volume.slices[0].path, stop_before_pixels=True)
    assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == lung_volume.series_instance_uid
    # The GSPS: the source instance it was derived from, listed after the CT series.
    [gsps] = ds.SourceInstanceSequence
    assert (gsps.ReferencedSOPClassUID, gsps.ReferencedSOPInstanceUID) == (GSPS_CLASS, GSPS_UID)
    assert len(ds.ReferencedSeriesSequence) == 2
    gsps_series = ds.ReferencedSeriesSequence[1]
    assert gsps_series.SeriesInstanceUID == GSPS_SERIES
    assert [r.ReferencedSOPInstanceUID for r in gsps_series.ReferencedInstanceSequence] == [
        GSPS_UID]
    assert "StudiesContainingOtherReferencedInstancesSequence" not in ds
    # The whole series is referenced, though highdicom was given only the slices the masks span.
    series = {s.sop_instance_uid for s in lung_volume.slices}
    listed = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in listed] == [s.sop_instance_uid
                                                             for s in lung_volume.slices]
    assert {r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence} == series
    frames = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for f in ds.PerFrameFunctionalGroupsSequence}
    assert frames < series
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = int(round(lung_volume.lps_to_index(position)[0, 2]))
        assert lung_volume.slices[k].sop_instance_uid == ref


def test_rerun_writes_the_same_uids(seg_path, lung_volume, gtv, sphere, specs, state,
                                   tmp_path):
    again = write_seg(lung_volume, [gtv, sphere], specs, CLASSICAL, tmp_path,
                      presentation_state=state)
    assert again.name == seg_path.name
    first, second = pydicom.dcmread(seg_path), pydicom.dcmread(again)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert (first.SeriesNumber, first.SeriesDescription) == (second.SeriesNumber,
                                                             second.SeriesDescription)
    other = write_seg(lung_volume, [sphere], specs[1:], AlgorithmSpec("SAM2CT", "0.1", SHA),
                      tmp_path, presentation_state=state)
    assert other.name != seg_path.name
    assert pydicom.dcmread(other).SeriesInstanceUID != first.SeriesInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([again.name, other.name])


def test_checkpoint_hash_and_ai_family_in_algorithm(lung_volume, sphere, specs, tmp_path):
    path = write_seg(lung_volume, [sphere], specs[:1], AlgorithmSpec("SAM2CT", "0.1", SHA),
                     tmp_path)
    algo = pydicom.dcmread(path).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "SAM2CT" and SHA[:16] in algo.AlgorithmVersion
    assert SHA in algo.AlgorithmParameters
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    assert pydicom.dcmread(path).DeviceSerialNumber == f"SAM2CT sha256:{SHA[:16]}"


def test_empty_mask_is_rejected_naming_the_segment(lung_volume, sphere, specs, tmp_path):
    empty = np.zeros(lung_volume.array.shape, dtype=bool)
    with pytest.raises(ValueError, match="'arrow'.*empty"):
        write_seg(lung_volume, [sphere, empty], specs, CLASSICAL, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mask_on_another_grid_and_count_mismatch_are_rejected(lung_volume, sphere, specs,
                                                             tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_seg(lung_volume, [sphere[1:]], specs[:1], CLASSICAL, tmp_path)
    with pytest.raises(ValueError, match="2 descriptions for 1 masks"):
        write_seg(lung_volume, [sphere], specs, CLASSICAL, tmp_path)


@pytest.mark.filterwarnings("ignore:.*unlikely to represent the intended person name")
def test_multiframe_source(lung1_001, lung_volume, gtv, specs, tmp_path):
    """A Legacy Converted Enhanced CT made by highdicom from 12 real slices, frames shuffled."""
    centre = int(np.argmax(gtv.sum(axis=(1, 2))))
    picked = list(range(centre - 6, centre + 6))
    order = picked[::2] + picked[1::2]  # frames stored out of z order
    datasets = [pydicom.dcmread(lung_volume.slices[k].path) for k in order]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "ct").mkdir()
    enhanced.save_as(tmp_path / "ct" / "enhanced.dcm")
    volume = load_series(tmp_path / "ct")
    assert volume.slices[0].frame_number is not None and volume.array.shape[0] == 12
    mask = gtv[picked]
    spec = SegmentSpec.for_annotation(LONG_UID, 12, "line", "line 98.3 mm")
    path = write_seg(volume, [mask], [spec], CLASSICAL, tmp_path / "seg")
    assert dciodvfy_errors(path) == []
    assert np.array_equal(read_seg_masks(path, volume)[1], mask)
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[0].TrackingID == spec.tracking_id
    assert ds.NumberOfFrames == int(mask.any(axis=(1, 2)).sum())  # empty frames omitted


def test_reads_dcmqi_written_seg():
    """dcmqi's own SEG (no 'spatial locations preserved') is placed by geometry."""
    volume = load_series(shared("seg/dcmqi/ct-3slice"))
    path = shared("seg/dcmqi/liver.dcm")
    masks = read_seg_masks(path, volume)
    assert list(masks) == [1]
    seg = hd.seg.segread(path)
    by_source = seg.get_pixels_by_source_instance(
        [s.sop_instance_uid for s in volume.slices], ignore_spatial_locations=True
    )[..., 0] > 0
    assert masks[1].sum() > 100_000
    assert np.array_equal(masks[1], by_source)


def test_reading_a_seg_of_another_frame_of_reference_fails(seg_path):
    volume = load_series(shared("seg/dcmqi/ct-3slice"))
    with pytest.raises(DicomInputError, match="frame of reference"):
        read_seg_masks(seg_path, volume)


def test_reading_a_non_seg_fails(lung_volume):
    with pytest.raises(DicomInputError, match="not a readable DICOM SEG"):
        read_seg_masks(lung_volume.slices[0].path, lung_volume)


def _colour_pixels(path: Path, rgb: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.sum(np.all(np.abs(pixels - rgb) < 40, axis=-1)))


@pytest.mark.parametrize("kind", ["arrow", "line", "bidirectional", "polygon", "circle"])
def test_preview_png(lung_volume, gtv, kind, tmp_path):
    k = int(np.argmax(gtv.sum(axis=(1, 2))))
    rows, cols = np.nonzero(gtv[k])
    r = float(rows.mean())
    points = {
        "arrow": [[cols.min(), r], [cols.min() - 25, r - 25]],
        "line": [[cols.min(), r], [cols.max(), r]],
        "bidirectional": [[cols.min(), r], [cols.max(), r], [cols.mean(), rows.min()],
                          [cols.mean(), rows.max()]],
        "polygon": [[cols.min(), r], [cols.mean(), rows.min()], [cols.max(), r]],
        "circle": [[cols.mean(), r], [cols.max(), r]],
    }[kind]
    out = render_preview(lung_volume, gtv, np.array(points), k, kind,
                         tmp_path / "p" / f"{kind}.png")
    assert out.exists() and [p.name for p in out.parent.iterdir()] == [f"{kind}.png"]
    assert Image.open(out).format == "PNG"
    assert _colour_pixels(out, (255, 212, 0)) > 50  # mask outline
    assert _colour_pixels(out, (0, 229, 255)) > 20  # the prompt


def test_window_choice(lung_volume, gtv):
    assert choose_window(np.full((10, 10), -850.0)) is CtWindow.LUNG
    assert choose_window(np.full((10, 10), 40.0)) is CtWindow.SOFT_TISSUE
    # A liver lesion in a crop whose corners are air outside the body: soft-tissue window.
    crop = np.full((40, 40), -1000.0)
    crop[5:35, 5:35] = 60.0
    lesion = np.zeros((40, 40), bool)
    lesion[15:25, 15:25] = True
    assert choose_window(crop) is CtWindow.LUNG
    assert choose_window(crop, lesion) is CtWindow.SOFT_TISSUE
    crop[5:35, 5:35] = -850.0  # a nodule inside lung
    crop[15:25, 15:25] = 30.0
    assert choose_window(crop, lesion) is CtWindow.LUNG
    with pytest.raises(ValueError, match="slice_index"):
        render_preview(lung_volume, gtv, np.zeros((1, 2)), 999, "point", Path("x.png"))
    with pytest.raises(ValueError, match="mask"):
        render_preview(lung_volume, gtv[1:], np.zeros((1, 2)), 0, "point", Path("x.png"))


def test_specs_validate_and_track_deterministically():
    spec = SegmentSpec.for_annotation("1.2.3", 4, "line", "line 10.0 mm")
    assert spec.tracking_id == tracking_id_for("1.2.3", 4) != tracking_id_for("1.2.4", 4)
    assert annotation_index_of(spec.tracking_id) == 4
    assert len(LONG_UID) == 64
    long_id = tracking_id_for(LONG_UID, 12)
    assert len(long_id) <= 64 and LONG_UID[-20:] not in long_id
    assert annotation_index_of(long_id) == 12
    assert annotation_index_of("1.2.3#4") is None
    assert spec.tracking_uid == tracking_uid_for("1.2.3", 4) != tracking_uid_for("1.2.3", 5)
    with pytest.raises(ValueError, match="label"):
        SegmentSpec("", "line", "a#1", "1.2.3")
    with pytest.raises(ValueError, match="tracking_id and tracking_uid"):
        SegmentSpec("x", "line", "", "1.2.3")
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        AlgorithmSpec("SAM2CT", "0.1", "not-a-hash")
    assert AlgorithmSpec("classical", "1").family is AlgorithmFamily.NEIGHBORHOOD_ANALYSIS
    assert AlgorithmSpec("SAM2CT", "1", SHA).family is AlgorithmFamily.ARTIFICIAL_INTELLIGENCE


def test_preview_of_a_mask_missing_from_the_prompt_slice(lung_volume, sphere, tmp_path):
    """The crop falls back to the mask's projection; the prompt is still drawn."""
    out = render_preview(lung_volume, sphere, np.array([[150.0, 250.0]]), 5, "point",
                         tmp_path / "point.png")
    assert Image.open(out).size == (SIZE, SIZE + TITLE_PX)
    assert _colour_pixels(out, (0, 229, 255)) > 5


@pytest.mark.slow
def test_seg_over_a_synthetic_study(synth_dir, tmp_path):
    """The demo's path: our own synthetic CT and its truth NIfTI -> a valid SEG."""
    from dicom_io.nifti import read_nifti

    study = sorted(p for p in synth_dir.iterdir() if p.is_dir())[0]
    volume = load_series(study / "ct")
    truth = sorted((study / "truth").glob("*.nii.gz"))
    masks = [read_nifti(p)[0] > 0 for p in truth[:2]]
    specs = [SegmentSpec.for_annotation(GSPS_UID, i, "line", p.name.split(".")[0])
             for i, p in enumerate(truth[:2])]
    path = write_seg(volume, masks, specs, CLASSICAL, tmp_path)
    assert dciodvfy_errors(path) == []
    back = read_seg_masks(path, volume)
    assert all(np.array_equal(back[i + 1], m) for i, m in enumerate(masks))


def test_source_header_lacking_study_uid_is_a_clear_error(lung_volume, tmp_path):
    for src in lung_volume.slices[60:63]:
        shutil.copy(src.path, tmp_path / src.path.name)
    volume = load_series(tmp_path)
    for path in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID
        ds.save_as(path)
    mask = np.zeros(volume.array.shape, dtype=bool)
    mask[1, 200:210, 200:210] = True
    spec = SegmentSpec.for_annotation(GSPS_UID, 0, "line", "line 9.8 mm")
    with pytest.raises(DicomInputError, match="source image headers lack"):
        write_seg(volume, [mask], [spec], CLASSICAL, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _annotation(kind: str, points, length=None, short=None, text="", index=0) -> Annotation:
    return Annotation(GSPS_UID, index, kind, "1.2.3", None, points, length_mm=length,
                      short_axis_mm=short, text=text)


def test_segment_labels_read_as_a_radiologist_would():
    line = [(1, 1), (9, 9)]
    assert segment_label(_annotation("line", line, 27.6)) == "Lesion, line 28 mm"
    assert segment_label(_annotation("line", line, 4.62)) == "Lesion, line 4.6 mm"
    assert segment_label(_annotation("arrow", line)) == "Lesion, arrow"
    assert segment_label(_annotation("bidirectional", line * 2, 31.2, 17.4)) == (
        "Lesion, bidirectional 31 x 17 mm")
    assert segment_label(_annotation("polygon", [*line, (1, 9)])) == "Lesion, outline"
    # The GSPS's own text, first line, made a valid LO value (ASCII, no backslash, <= 64).
    assert segment_label(_annotation("arrow", line, text="\n  RUL nodule \\ new\nmore")) == (
        "RUL nodule / new")
    assert segment_label(_annotation("ellipse", line * 2, text="Area: 119.58 cm\u00b2")) == (
        "Area: 119.58 cm2")
    assert len(segment_label(_annotation("arrow", line, text="x" * 300))) == 64
    # A viewer's bare measurement readout says less than the measure itself.
    assert segment_label(_annotation("line", line, 18.1, text="18.1 mm")) == "Lesion, line 18 mm"
    assert segment_label(_annotation("line", line, 18.1, text=" \\ ")) == "Lesion, line 18 mm"
    spec = SegmentSpec.from_annotation(_annotation("line", line, 27.6, index=3))
    assert spec.label == "Lesion, line 28 mm" and spec.description.startswith(
        "Lesion, line 28 mm; annotation 3")
    assert spec.tracking_uid == tracking_uid_for(GSPS_UID, 3)


# One SH value of the Agfa file has 20 characters (SH allows 16); the date below is broken on
# purpose.
_REAL_GSPS_WARNINGS = ("ignore:The value length .* exceeds the maximum length:UserWarning",
                       "ignore:Invalid value for VR DA:UserWarning")


@pytest.mark.filterwarnings(*_REAL_GSPS_WARNINGS)
def test_presentation_state_reference_from_a_real_gsps():
    ds = read_presentation_state(shared("gsps/agfa-impax/GSPS_PS.dcm"))
    ref = PresentationStateRef.from_dataset(ds)
    assert ref.referencable
    assert (ref.sop_instance_uid, ref.series_instance_uid) == (ds.SOPInstanceUID,
                                                               ds.SeriesInstanceUID)
    assert ref.label == "DIAGUSER_DEFINED" and ref.created == "2021-10-01 16:14"
    del ds.SeriesInstanceUID
    ds.PresentationCreationDate = "not a date"
    broken = PresentationStateRef.from_dataset(ds)
    assert not broken.referencable and broken.created == ""


@pytest.mark.filterwarnings(_REAL_GSPS_WARNINGS[0])
def test_gsps_of_another_study_is_referenced_and_read_back(lung_volume, sphere, tmp_path):
    """A GSPS from another study (Agfa IMPAX, real) as source: listed under Studies Containing
    Other Referenced Instances; dciodvfy clean; the provenance reads back to its annotation."""
    ds = read_presentation_state(shared("gsps/agfa-impax/GSPS_PS.dcm"))
    ref = PresentationStateRef.from_dataset(ds)
    assert ref.study_instance_uid != lung_volume.study_instance_uid
    spec = SegmentSpec.for_annotation(ref.sop_instance_uid, 0, "line", "Lesion, line 11 mm")
    path = write_seg(lung_volume, [sphere], [spec], CLASSICAL, tmp_path, presentation_state=ref)
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(seg.ReferencedSeriesSequence) == 1
    [other] = seg.StudiesContainingOtherReferencedInstancesSequence
    assert other.StudyInstanceUID == ref.study_instance_uid
    assert other.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
        .ReferencedSOPInstanceUID == ref.sop_instance_uid
    [origin] = read_provenance(path)
    assert (origin.gsps_sop_instance_uid, origin.annotation_index) == (ref.sop_instance_uid, 0)
    assert read_seg_masks(path, lung_volume)[1].sum() == sphere.sum()


def test_provenance_of_a_seg_without_gsps_or_with_forged_tracking_fails(
        seg_path, lung_volume, sphere, specs, tmp_path):
    plain = write_seg(lung_volume, [sphere], specs[:1], CLASSICAL, tmp_path / "plain")
    with pytest.raises(DicomInputError, match="0 presentation states"):
        read_provenance(plain)
    forged = pydicom.dcmread(seg_path)
    forged.SegmentSequence[1].TrackingID = tracking_id_for(GSPS_UID, 4)
    forged.save_as(tmp_path / "forged.dcm")
    with pytest.raises(DicomInputError, match="segment 2 - its Tracking ID and UID"):
        read_provenance(tmp_path / "forged.dcm")
    with pytest.raises(DicomInputError, match="not a readable DICOM SEG"):
        read_provenance(lung_volume.slices[0].path)
