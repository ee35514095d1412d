"""Synthetic studies (dicom_io.synth): determinism, layout, DICOM validity, truth and drawings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import dciodvfy_errors
from scipy import ndimage

from dicom_io.nifti import affine_of, read_nifti
from dicom_io.synth import EXPECTED_KINDS, Encoding, make_studies
from dicom_io.synth.gsps_writer import ARROW_ENCODINGS, LINE_ENCODINGS
from flows.cli import main


@pytest.fixture(scope="module")
def manifest(synth_dir: Path) -> dict:
    return json.loads((synth_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def ct(synth_dir: Path, manifest: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each study's CT read by SimpleITK (an independent reader): (HU array, affine)."""
    out = {}
    for study in manifest["studies"]:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(synth_dir / study["ct_dir"])))
        image = reader.Execute()
        out[study["name"]] = (sitk.GetArrayFromImage(image).astype(np.float32), affine_of(image))
    return out


def _gsps(synth_dir: Path, manifest: dict, encoding: Encoding) -> tuple[dict, pydicom.Dataset]:
    entry = next(g for g in manifest["studies"][0]["gsps"] if g["encoding"] == encoding.value)
    return entry, pydicom.dcmread(synth_dir / entry["file"])


def _lesion(manifest: dict, entry: dict) -> dict:
    study = next(s for s in manifest["studies"] if entry in s["gsps"])
    return next(les for les in study["lesions"] if les["id"] == entry["lesion"])


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(synth_dir: Path, tmp_path: Path) -> None:
    again = make_studies(tmp_path / "again", studies=2, seed=7, size=192)
    first = sorted(p.relative_to(synth_dir) for p in synth_dir.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (synth_dir / rel).read_bytes() == (again.parent / rel).read_bytes(), rel


def test_other_seed_gives_other_uids(manifest: dict, tmp_path: Path) -> None:
    other = json.loads(make_studies(tmp_path, studies=1, seed=8, size=64, slices=24).read_text())
    assert other["seed"] == 8
    assert other["studies"][0]["study_instance_uid"] != manifest["studies"][0][
        "study_instance_uid"]


def test_layout_and_manifest(synth_dir: Path, manifest: dict) -> None:
    assert manifest["seed"] == 7
    assert [s["name"] for s in manifest["studies"]] == ["study-001", "study-002"]
    assert [s["study_date"] for s in manifest["studies"]] == ["20260105", "20260106"]
    for study in manifest["studies"]:
        files = sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))
        assert len(files) == study["slices"] and study["ct_dir"] == f"{study['name']}/ct"
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert (first.Rows, first.Columns) == (study["rows"], study["columns"]) == (192, 192)
        assert first.StudyInstanceUID == study["study_instance_uid"]
        assert first.SeriesInstanceUID == study["series_instance_uid"]
        assert first.StudyDate == study["study_date"]
        assert str(first.PatientName).startswith("SYNTH^") and first.PatientID.startswith("SYN")
        assert 2.0 <= float(first.SliceThickness) <= 5.0
        assert study["lesions"]
        for lesion in study["lesions"]:
            assert (synth_dir / lesion["truth"]).is_file()
            assert lesion["truth"] == f"{study['name']}/truth/{lesion['id']}.nii.gz"
            assert 5.0 <= lesion["diameter_mm"] <= 60.0
        encodings = {g["encoding"] for g in study["gsps"]}
        assert encodings == {e.value for e in Encoding}
        for lesion in study["lesions"]:
            mine = {g["encoding"] for g in study["gsps"] if g["lesion"] == lesion["id"]}
            assert mine & {e.value for e in LINE_ENCODINGS}, lesion["id"]
            assert mine & {e.value for e in ARROW_ENCODINGS}, lesion["id"]
        for g in study["gsps"]:
            ds = pydicom.dcmread(synth_dir / g["file"])
            assert g["file"].startswith(f"{study['name']}/gsps/")
            assert ds.SOPInstanceUID == g["sop_instance_uid"] and ds.Modality == "PR"
            ref = ds.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
            assert ref.ReferencedSOPInstanceUID == g["referenced_sop_instance_uid"]
            assert g["expected_kinds"] == list(EXPECTED_KINDS[Encoding(g["encoding"])])


def test_pixel_spacing_is_realistic_at_full_size(tmp_path: Path) -> None:
    manifest = json.loads(make_studies(tmp_path, 1, seed=5, size=512, slices=12).read_text())
    assert 0.7 <= manifest["studies"][0]["pixel_spacing_mm"] <= 0.9


def test_gsps_references_the_annotated_slice(synth_dir: Path, manifest: dict, ct: dict) -> None:
    for study in manifest["studies"]:
        affine = ct[study["name"]][1]
        headers = [pydicom.dcmread(p, stop_before_pixels=True)
                   for p in (synth_dir / study["ct_dir"]).glob("*.dcm")]
        by_uid = {h.SOPInstanceUID: h for h in headers}
        for g in study["gsps"]:
            ipp = np.array(by_uid[g["referenced_sop_instance_uid"]].ImagePositionPatient,
                           dtype=float)
            index = np.linalg.solve(affine[:3, :3], ipp - affine[:3, 3])
            assert round(index[2]) == g["slice_index"] == _lesion(manifest, g)["slice_index"]


def test_ct_slice_passes_dciodvfy(synth_dir: Path, manifest: dict) -> None:
    for study in manifest["studies"]:
        path = sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))[study["slices"] // 2]
        assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("encoding", list(Encoding), ids=lambda e: e.value)
def test_gsps_passes_dciodvfy(synth_dir: Path, manifest: dict, encoding: Encoding) -> None:
    entry, _ = _gsps(synth_dir, manifest, encoding)
    assert dciodvfy_errors(synth_dir / entry["file"]) == []


def test_truth_aligns_with_ct(synth_dir: Path, manifest: dict, ct: dict) -> None:
    for study in manifest["studies"]:
        hu, affine = ct[study["name"]]
        for lesion in study["lesions"]:
            truth, truth_affine = read_nifti(synth_dir / lesion["truth"])
            assert truth.dtype == np.uint8 and truth.shape == hu.shape
            assert set(np.unique(truth)) == {0, 1}
            np.testing.assert_allclose(truth_affine, affine, atol=1e-3)
            areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
            assert areas[lesion["slice_index"]] == areas.max() > 0
            core = ndimage.binary_erosion(truth > 0)
            if core.sum() < 20:  # too small to have an interior free of partial volume
                core = truth > 0
                tolerance = 120.0
            else:
                tolerance = 15.0
            assert abs(float(hu[core].mean()) - lesion["mean_hu"]) < tolerance, lesion["id"]
            # and the lesion stands out from its surroundings where they differ
            ring = ndimage.binary_dilation(truth > 0, iterations=3) & ~(truth > 0)
            assert abs(float(hu[ring].mean()) - lesion["mean_hu"]) > 5.0, lesion["id"]


def _longest_diameter_px(plane: np.ndarray) -> float:
    rows, cols = np.nonzero(plane)
    pts = np.stack([cols, rows], axis=1).astype(float)
    return float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1).max()))


def test_line_mm_is_the_longest_diameter(synth_dir: Path, manifest: dict) -> None:
    for study in manifest["studies"]:
        for g in (g for g in study["gsps"] if g["encoding"] == Encoding.LINE_MM.value):
            lesion = _lesion(manifest, g)
            ds = pydicom.dcmread(synth_dir / g["file"])
            item = ds.GraphicAnnotationSequence[0]
            line = item.GraphicObjectSequence[0]
            assert (line.GraphicType, line.NumberOfGraphicPoints) == ("POLYLINE", 2)
            ends = np.array(line.GraphicData, dtype=float).reshape(2, 2)
            truth, _ = read_nifti(synth_dir / lesion["truth"])
            longest = _longest_diameter_px(truth[lesion["slice_index"]])
            length_px = float(np.linalg.norm(ends[1] - ends[0]))
            assert abs(length_px - longest) <= 1.0
            text = item.TextObjectSequence[0]
            spacing = float(ds.DisplayedAreaSelectionSequence[0].PresentationPixelSpacing[0])
            assert text.UnformattedTextValue == f"{length_px * spacing:.1f} mm"
            np.testing.assert_allclose(text.AnchorPoint, ends[1], atol=1e-4)


def test_arrows_point_at_the_lesion_edge(synth_dir: Path, manifest: dict) -> None:
    for study in manifest["studies"]:
        for g in study["gsps"]:
            if Encoding(g["encoding"]) not in ARROW_ENCODINGS:
                continue
            lesion = _lesion(manifest, g)
            plane = read_nifti(synth_dir / lesion["truth"])[0][lesion["slice_index"]] > 0
            tip, tail = np.array(g["points"]) - 0.5  # PIXEL -> voxel index
            near = ndimage.binary_dilation(plane)  # on or just inside the boundary
            assert near[int(round(tip[1])), int(round(tip[0]))], g["file"]
            assert not plane[int(round(tail[1])), int(round(tail[0]))], g["file"]
            assert np.linalg.norm(tail - tip) > 3


def test_agfa_arrow_structure(synth_dir: Path, manifest: dict) -> None:
    entry, ds = _gsps(synth_dir, manifest, Encoding.AGFA_ARROW)
    item = ds.GraphicAnnotationSequence[0]
    shaft, head = item.GraphicObjectSequence
    tip = np.array(entry["points"][0])
    np.testing.assert_allclose(np.reshape(head.GraphicData, (3, 2))[1], tip, atol=1e-4)
    np.testing.assert_allclose(np.reshape(shaft.GraphicData, (2, 2))[1], tip, atol=1e-4)
    text = item.TextObjectSequence[0]
    assert text.AnchorPointVisibility == "N"
    np.testing.assert_allclose(text.AnchorPoint, tip, atol=1e-4)


def test_compound_and_layer_arrows(synth_dir: Path, manifest: dict) -> None:
    entry, ds = _gsps(synth_dir, manifest, Encoding.COMPOUND_ARROW)
    item = ds.GraphicAnnotationSequence[0]
    compound = item.CompoundGraphicSequence[0]
    assert compound.CompoundGraphicType == "ARROW"
    assert item.GraphicObjectSequence[0].CompoundGraphicInstanceID == \
        compound.CompoundGraphicInstanceID
    tail_tip = np.reshape(compound.GraphicData, (2, 2))
    np.testing.assert_allclose(tail_tip, np.array(entry["points"])[::-1], atol=1e-4)
    entry, ds = _gsps(synth_dir, manifest, Encoding.LAYER_ARROW)
    item = ds.GraphicAnnotationSequence[0]
    assert item.GraphicLayer == "ARROW" and "TextObjectSequence" not in item
    assert ds.GraphicLayerSequence[0].GraphicLayer == "ARROW"


def test_text_anchor_arrow_tail_is_box_centre(synth_dir: Path, manifest: dict) -> None:
    entry, ds = _gsps(synth_dir, manifest, Encoding.TEXT_ANCHOR_ARROW)
    text = ds.GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert text.AnchorPointVisibility == "Y"
    centre = (np.array(text.BoundingBoxTopLeftHandCorner)
              + np.array(text.BoundingBoxBottomRightHandCorner)) / 2
    np.testing.assert_allclose(centre, entry["points"][1], atol=1e-4)
    np.testing.assert_allclose(text.AnchorPoint, entry["points"][0], atol=1e-4)


def test_bidirectional_axes_cross_at_right_angles(synth_dir: Path, manifest: dict) -> None:
    _, ds = _gsps(synth_dir, manifest, Encoding.BIDIRECTIONAL)
    long_axis, short_axis = (np.reshape(g.GraphicData, (2, 2))
                             for g in ds.GraphicAnnotationSequence[0].GraphicObjectSequence)
    u, v = long_axis[1] - long_axis[0], short_axis[1] - short_axis[0]
    assert np.linalg.norm(u) >= np.linalg.norm(v) > 0
    assert abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) < 0.05
    # the short axis' foot lies on the long axis, between its ends
    t = ((short_axis[0] - long_axis[0]) @ u) / (u @ u)
    assert -0.01 <= t <= 1.01


def _display_to_pixel(ds: pydicom.Dataset, points: np.ndarray) -> np.ndarray:
    """Reference mapping for our two DISPLAY encodings (no flip; rotation 0 or 90)."""
    area = ds.DisplayedAreaSelectionSequence[0]
    tl, br = (np.array(v, dtype=float) for v in (area.DisplayedAreaTopLeftHandCorner,
                                                 area.DisplayedAreaBottomRightHandCorner))
    lo, hi = np.minimum(tl, br) - 1, np.maximum(tl, br)
    size = hi - lo
    if int(ds.ImageRotation) == 90:
        return np.stack([points[:, 1] * size[0] + lo[0],
                         (1 - points[:, 0]) * size[1] + lo[1]], axis=1)
    return points * size + lo


@pytest.mark.parametrize("encoding", [Encoding.DISPLAY_UNITS, Encoding.ROTATED],
                         ids=lambda e: e.value)
def test_display_unit_lines_map_back_to_pixels(synth_dir: Path, manifest: dict,
                                               encoding: Encoding) -> None:
    entry, ds = _gsps(synth_dir, manifest, encoding)
    graphic = ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert graphic.GraphicAnnotationUnits == "DISPLAY"
    display = np.reshape(graphic.GraphicData, (2, 2))
    assert np.all((display >= 0) & (display <= 1))
    np.testing.assert_allclose(_display_to_pixel(ds, display), entry["points"], atol=1e-3)
    lesion = _lesion(manifest, entry)
    assert entry["length_mm"] == pytest.approx(lesion["long_axis_mm"], abs=0.01)
    if encoding is Encoding.ROTATED:
        assert int(ds.ImageRotation) == 90


def test_regions_enclose_the_lesion_centre(synth_dir: Path, manifest: dict) -> None:
    for encoding, count in ((Encoding.ELLIPSE, 4), (Encoding.CIRCLE, 2)):
        entry, ds = _gsps(synth_dir, manifest, encoding)
        graphic = ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
        assert graphic.GraphicType == encoding.name and graphic.NumberOfGraphicPoints == count
        lesion = _lesion(manifest, entry)
        plane = read_nifti(synth_dir / lesion["truth"])[0][lesion["slice_index"]]
        rows, cols = np.nonzero(plane)
        centre = np.array(graphic.GraphicData[:2]) if count == 2 else np.reshape(
            graphic.GraphicData, (4, 2))[:2].mean(axis=0)
        assert np.linalg.norm(centre - 0.5 - [cols.mean(), rows.mean()]) < 0.25 * np.sqrt(
            len(rows))


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--studies", "1", "--seed", "3", "--size", "64",
               "--slices", "24", "--start-date", "2026-02-01", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "manifest.json").read_text())
    assert printed["studies"][0]["study_date"] == "20260201"
    assert main(["synth", str(tmp_path / "bad"), "--studies", "0"]) == 2
    err = capsys.readouterr().err
    assert "studies" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("encoding", list(Encoding), ids=lambda e: e.value)
def test_annotate_real_ct_slice(lung1_001: Path, tmp_path: Path, encoding: Encoding) -> None:
    """The same encodings drawn over a real LUNG1 slice reference it and pass dciodvfy."""
    from dicom_io.synth.annotate import annotate_image

    image = sorted((lung1_001 / "ct").glob("*.dcm"))[40]
    yy, xx = np.mgrid[:512, :512]
    mask = ((xx - 300) / 30.0) ** 2 + ((yy - 250) / 18.0) ** 2 <= 1
    entry = annotate_image(image, mask, encoding, tmp_path / "pr.dcm", seed=1)
    ds = pydicom.dcmread(entry["file"])
    ref = pydicom.dcmread(image, stop_before_pixels=True)
    assert ds.StudyInstanceUID == ref.StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.SeriesInstanceUID
    assert entry["referenced_sop_instance_uid"] == ref.SOPInstanceUID
    assert dciodvfy_errors(Path(entry["file"])) == []
    if entry["length_mm"] is not None:  # long axis of the 60 x 36 px ellipse
        assert entry["length_mm"] == pytest.approx(60 * float(ref.PixelSpacing[0]), abs=1.0)


def test_annotate_rejects_a_wrong_mask(lung1_001: Path, tmp_path: Path) -> None:
    from dicom_io.synth.annotate import annotate_image

    image = sorted((lung1_001 / "ct").glob("*.dcm"))[0]
    with pytest.raises(ValueError, match="shape"):
        annotate_image(image, np.ones((10, 10), bool), "line-mm", tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="empty"):
        annotate_image(image, np.zeros((512, 512), bool), "line-mm", tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_gsps_parse_back_to_expected_kinds_and_points(synth_dir: Path, manifest: dict) -> None:
    """Integration with the GSPS reader: each file gives the manifest's kinds and points."""
    gsps = pytest.importorskip("dicom_io.gsps")
    for study in manifest["studies"]:
        for g in study["gsps"]:
            found = [a for a in gsps.read_gsps(synth_dir / g["file"]) if a.skip_reason is None]
            assert [a.kind.value for a in found] == g["expected_kinds"], g["file"]
            np.testing.assert_allclose(np.asarray(found[0].points), g["points"], atol=1e-3,
                                       err_msg=g["file"])
