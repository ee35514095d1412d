"""GSPS -> annotations -> voxels: real third-party PRs, and every encoding and bad input of
../shared/docs/gsps-encodings.md built with pydicom on top of real LUNG1 CT slices."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors, shared
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    MRImageStorage,
    generate_uid,
)

from dicom_io.errors import DicomInputError
from dicom_io.gsps import (
    Annotation,
    AnnotationKind,
    DisplayedArea,
    SpatialTransform,
    display_to_pixel,
    locate,
    mark_duplicates,
    read_gsps,
)
from dicom_io.volume import load_series

GSPS = "gsps"

# ------------------------------------------------------------------------------------------------
# A small GSPS builder (pydicom), referencing a real image
# ------------------------------------------------------------------------------------------------


def graphic(points, gtype: str = "POLYLINE", units: str = "PIXEL",
            compound_id: int | None = None) -> Dataset:
    """One Graphic Object Sequence item; ``points`` is a list of (column, row)."""
    g = Dataset()
    g.GraphicAnnotationUnits = units
    g.GraphicDimensions = 2
    g.NumberOfGraphicPoints = len(points)
    g.GraphicData = [float(v) for p in points for v in p]
    g.GraphicType = gtype
    g.GraphicFilled = "N"
    if compound_id is not None:
        g.CompoundGraphicInstanceID = compound_id
    return g


def text(value: str, anchor=None, visible: bool = False, box=None, units: str = "PIXEL") -> Dataset:
    """One Text Object Sequence item."""
    t = Dataset()
    if box is not None:
        t.BoundingBoxAnnotationUnits = units
    if anchor is not None:
        t.AnchorPointAnnotationUnits = units
    t.UnformattedTextValue = value
    if box is not None:
        t.BoundingBoxTopLeftHandCorner = [float(v) for v in box[0]]
        t.BoundingBoxBottomRightHandCorner = [float(v) for v in box[1]]
        t.BoundingBoxTextHorizontalJustification = "LEFT"
    if anchor is not None:
        t.AnchorPoint = [float(v) for v in anchor]
        t.AnchorPointVisibility = "Y" if visible else "N"
    return t


def compound(points, ctype: str, cid: int) -> Dataset:
    """One Compound Graphic Sequence item."""
    c = Dataset()
    c.CompoundGraphicInstanceID = cid
    c.CompoundGraphicUnits = "PIXEL"
    c.GraphicDimensions = 2
    c.NumberOfGraphicPoints = len(points)
    c.GraphicData = [float(v) for p in points for v in p]
    c.CompoundGraphicType = ctype
    return c


def ref_image(uid: str, sop_class: str = CTImageStorage) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = uid
    return ref


def item(uid: str, layer: str = "LAYER1", graphics=(), texts=(), compounds=(),
         sop_class: str = CTImageStorage) -> Dataset:
    """A Graphic Annotation item on image ``uid``."""
    it = Dataset()
    it.ReferencedImageSequence = Sequence([ref_image(uid, sop_class)])
    it.GraphicLayer = layer
    if texts:
        it.TextObjectSequence = Sequence(list(texts))
    if graphics:
        it.GraphicObjectSequence = Sequence(list(graphics))
    if compounds:
        it.CompoundGraphicSequence = Sequence(list(compounds))
    return it


def write_gsps(path: Path, image: Dataset, items: list[Dataset], *, area=None, rotation: int = 0,
               flip: bool = False, with_area: bool = True,
               sop_class: str = CTImageStorage) -> Path:
    """A complete GSPS referencing ``image`` (a real CT header), holding ``items``."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.SOPInstanceUID = uid
    ds.Modality = "PR"
    ds.StudyInstanceUID = image.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "Laterality",
                    "Manufacturer", "ContentDescription"):
        setattr(ds, keyword, "")  # type 2: present, empty (no patient data in tests)
    ds.StudyDate, ds.StudyTime = image.get("StudyDate", ""), image.get("StudyTime", "")
    ds.SeriesNumber = 99
    ds.PresentationCreationDate, ds.PresentationCreationTime = "20260101", "120000"
    ds.ContentLabel = "TEST"
    ds.PresentationLUTShape = "IDENTITY"
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([ref_image(image.SOPInstanceUID, sop_class)])
    ds.ReferencedSeriesSequence = Sequence([series])
    if with_area:
        tlhc, brhc = area or ((1, 1), (int(image.Columns), int(image.Rows)))
        sel = Dataset()
        sel.ReferencedImageSequence = Sequence([ref_image(image.SOPInstanceUID, sop_class)])
        sel.DisplayedAreaTopLeftHandCorner = list(tlhc)
        sel.DisplayedAreaBottomRightHandCorner = list(brhc)
        sel.PresentationSizeMode = "SCALE TO FIT"
        sel.PresentationPixelSpacing = [str(v) for v in image.PixelSpacing]
        ds.DisplayedAreaSelectionSequence = Sequence([sel])
    ds.ImageRotation = rotation
    ds.ImageHorizontalFlip = "Y" if flip else "N"
    ds.GraphicAnnotationSequence = Sequence(items)
    layers = []
    for order, name in enumerate(sorted({str(i.GraphicLayer) for i in items}), start=1):
        layer = Dataset()
        layer.GraphicLayer = name
        layer.GraphicLayerOrder = order
        layers.append(layer)
    if layers:
        ds.GraphicLayerSequence = Sequence(layers)
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------
# Fixtures: three real LUNG1-001 CT slices
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_files() -> list[Path]:
    folder = shared("lung1/LUNG1-001/ct")
    return [folder / f"{n}.dcm" for n in (109, 108, 107)]  # consecutive, 3 mm apart


@pytest.fixture(scope="module")
def ct_image(ct_files: list[Path]) -> Dataset:
    return pydicom.dcmread(ct_files[1], stop_before_pixels=True)


@pytest.fixture(scope="module")
def volume(ct_files: list[Path]):
    return load_series(ct_files)


def only(annotations: list[Annotation]) -> Annotation:
    assert len(annotations) == 1, [(a.kind, a.origin) for a in annotations]
    return annotations[0]


def pts(a: Annotation) -> np.ndarray:
    return np.asarray(a.points)


# ------------------------------------------------------------------------------------------------
# Real third-party presentation states
# ------------------------------------------------------------------------------------------------


def test_agfa_distance_is_one_line_of_11_1_mm() -> None:
    a = only(read_gsps(shared(f"{GSPS}/agfa-impax/GSPS_PS.dcm")))
    assert a.kind is AnnotationKind.LINE
    assert a.length_mm == pytest.approx(11.1, abs=0.3)
    assert a.spacing_source == "PresentationPixelSpacing"
    assert "Length: 11.1mm" in a.text  # the measurement text labels the line
    assert a.referenced_sop_instance_uid.endswith(".188812342173958994015240267909703912045")
    assert a.skip_reason is None and a.usable
    assert a.identifier == f"{a.gsps_sop_instance_uid}#0"


def test_agfa_display_only_pr_has_no_annotations() -> None:
    assert read_gsps(shared(f"{GSPS}/agfa-impax/GSPS.dcm")) == []


@pytest.mark.parametrize("name", ["real01", "real02", "real03", "real04"])
def test_clearcanvas_freehand_roi_is_one_closed_polygon(name: str) -> None:
    folder = shared(f"{GSPS}/clearcanvas")
    image = pydicom.dcmread(folder / f"{name}.dcm", stop_before_pixels=True)
    a = only(read_gsps(folder / f"{name}.pr.dcm", image))
    assert a.kind is AnnotationKind.POLYGON and a.closed
    assert a.referenced_sop_instance_uid == image.SOPInstanceUID
    assert 34 <= len(a.points) <= 63  # 35-64 stored points, the closing repeat dropped
    assert a.points[0] != a.points[-1]
    assert a.skip_reason is None  # inside the image it references
    assert a.text.startswith("A=")


def test_meddream_ellipse_with_its_cr_image() -> None:
    folder = shared(f"{GSPS}/meddream")
    a = only(read_gsps(folder / "PR000000.dcm"))
    assert a.kind is AnnotationKind.ELLIPSE and len(a.points) == 4
    assert a.length_mm is None  # no spacing anywhere without the image
    image = pydicom.dcmread(folder / "CR000000.dcm", stop_before_pixels=True)
    a = only(read_gsps(folder / "PR000000.dcm", image))
    assert a.skip_reason is None
    assert a.spacing_source == "ImagerPixelSpacing"
    assert a.length_mm == pytest.approx(126.8, abs=0.5)  # the text says W: 12.68 cm
    assert "Area" in a.text


# ------------------------------------------------------------------------------------------------
# Encodings of gsps-encodings.md, on a real CT slice
# ------------------------------------------------------------------------------------------------


def test_built_gsps_is_valid_dicom(tmp_path: Path, ct_image: Dataset) -> None:
    uid = ct_image.SOPInstanceUID
    it = item(uid, graphics=[graphic([(100, 100), (150, 120)])],
              texts=[text("x", anchor=(300, 300), visible=True, box=((10, 10), (20, 20)))],
              compounds=[compound([(1, 1), (5, 5)], "ARROW", 1)])
    path = write_gsps(tmp_path / "pr.dcm", ct_image, [it])
    assert [a.kind for a in read_gsps(path, ct_image)] == ["arrow", "line", "arrow"]
    assert dciodvfy_errors(path) == []


def test_agfa_three_part_arrow(tmp_path: Path, ct_image: Dataset) -> None:
    tip, tail = (200.5, 210.5), (240.5, 250.5)
    head = [(205.0, 220.0), tip, (213.0, 212.0)]
    it = item(ct_image.SOPInstanceUID, "CUSTOM",
              graphics=[graphic([tail, tip]), graphic(head)],
              texts=[text("", anchor=tip, visible=False)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is AnnotationKind.ARROW
    np.testing.assert_allclose(pts(a), [tip, tail])


def test_text_anchor_arrow_with_visible_anchor(tmp_path: Path, ct_image: Dataset) -> None:
    tip = (300.0, 280.0)
    box = ((340.0, 330.0), (400.0, 344.0))
    it = item(ct_image.SOPInstanceUID, texts=[text("Lesion", anchor=tip, visible=True, box=box)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is AnnotationKind.ARROW and a.text == "Lesion"
    np.testing.assert_allclose(pts(a), [tip, (370.0, 337.0)])  # tail = box centre


def test_invisible_anchor_text_alone_is_text_not_prompt(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID, texts=[text("note", anchor=(10, 10), visible=False)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert a.kind is AnnotationKind.TEXT and not a.usable


def test_compound_arrow_consumes_its_polyline(tmp_path: Path, ct_image: Dataset) -> None:
    tail, tip = (120.0, 130.0), (160.0, 170.0)
    it = item(ct_image.SOPInstanceUID, "ANNOTATION",
              graphics=[graphic([tail, tip], compound_id=1)],
              compounds=[compound([tail, tip], "ARROW", 1)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert a.kind is AnnotationKind.ARROW
    np.testing.assert_allclose(pts(a), [tip, tail])


def test_compound_ruler_is_a_line(tmp_path: Path, ct_image: Dataset) -> None:
    ends = [(120.0, 130.0), (160.0, 130.0)]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(ends, compound_id=7)],
              compounds=[compound(ends, "RULER", 7)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is AnnotationKind.LINE
    assert a.length_mm == pytest.approx(40 * float(ct_image.PixelSpacing[1]))
    assert a.spacing_source == "PixelSpacing"


def test_private_compound_type_is_ignored(tmp_path: Path, ct_image: Dataset) -> None:
    ends = [(120.0, 130.0), (160.0, 130.0)]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(ends, compound_id=1)],
              compounds=[compound([], "PRIVATE_AGILITY", 1)])
    assert only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]))).kind == "line"


def test_lone_line_on_arrow_layer_is_an_arrow(tmp_path: Path, ct_image: Dataset) -> None:
    tail, tip = (50.0, 60.0), (90.0, 95.0)
    it = item(ct_image.SOPInstanceUID, "ARROW", graphics=[graphic([tail, tip])])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert a.kind is AnnotationKind.ARROW and a.layer == "ARROW"
    np.testing.assert_allclose(pts(a), [tip, tail])


def test_line_length_comes_from_pixel_spacing_not_text(tmp_path: Path, ct_image: Dataset) -> None:
    ends = [(100.5, 200.5), (130.5, 240.5)]  # 50 px
    it = item(ct_image.SOPInstanceUID, "MEASUREMENT", graphics=[graphic(ends)],
              texts=[text("99.9 mm", anchor=ends[1], visible=True,
                          box=((150, 190), (190, 204)))])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is AnnotationKind.LINE and a.text == "99.9 mm"
    assert a.length_mm == pytest.approx(50 * 0.9765625)


def test_bidirectional_long_axis_first(tmp_path: Path, ct_image: Dataset) -> None:
    long_ends = [(100.0, 100.0), (160.0, 100.0)]
    short_ends = [(130.0, 85.0), (130.0, 115.0)]
    it = item(ct_image.SOPInstanceUID, "MEASUREMENT",
              graphics=[graphic(short_ends), graphic(long_ends)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is AnnotationKind.BIDIRECTIONAL
    np.testing.assert_allclose(pts(a), long_ends + short_ends)
    assert a.length_mm == pytest.approx(60 * 0.9765625)
    assert a.short_axis_mm == pytest.approx(30 * 0.9765625)


def test_two_separate_lines_are_not_bidirectional(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(10, 10), (40, 10)]),
                                                 graphic([(10, 50), (40, 50)])])
    kinds = [a.kind for a in read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]))]
    assert kinds == [AnnotationKind.LINE, AnnotationKind.LINE]


@pytest.mark.parametrize(
    ("gtype", "points", "kind", "length"),
    [
        ("CIRCLE", [(200.0, 200.0), (210.0, 200.0)], AnnotationKind.CIRCLE, 20 * 0.9765625),
        ("POINT", [(250.5, 260.5)], AnnotationKind.POINT, None),
        ("ELLIPSE", [(180, 200), (220, 200), (200, 190), (200, 210)], AnnotationKind.ELLIPSE,
         40 * 0.9765625),
    ],
)
def test_circle_point_ellipse(tmp_path: Path, ct_image: Dataset, gtype: str, points, kind,
                              length) -> None:
    it = item(ct_image.SOPInstanceUID, "ROI", graphics=[graphic(points, gtype)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    assert a.kind is kind and a.skip_reason is None
    np.testing.assert_allclose(pts(a), points)
    assert a.length_mm == (None if length is None else pytest.approx(length))


def test_interpolated_outline_is_a_polygon(tmp_path: Path, ct_image: Dataset) -> None:
    outline = [(100, 100), (140, 95), (150, 130), (110, 140), (100, 100)]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(outline, "INTERPOLATED")])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert a.kind is AnnotationKind.POLYGON and a.closed and len(a.points) == 4


def test_a_polygon_of_too_many_points_is_a_recorded_skip(tmp_path: Path, ct_image: Dataset,
                                                        monkeypatch) -> None:
    """Over the kind's limit: that annotation is skipped with the reason, the next is kept.
    (The real limit, 100,000, does not fit one explicit-VR Graphic Data: it is lowered here.)"""
    from dicom_io.gsps.annotation import POINT_COUNTS

    monkeypatch.setitem(POINT_COUNTS, AnnotationKind.POLYGON, (3, 50))
    angles = np.linspace(0, 2 * np.pi, 51, endpoint=False)
    ring = [(200 + 50 * np.cos(a), 200 + 50 * np.sin(a)) for a in angles]
    it = item(ct_image.SOPInstanceUID,
              graphics=[graphic(ring + [ring[0]], "POLYLINE"), graphic([(1, 1), (9, 9)])])
    big, line = read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]))
    assert big.kind is AnnotationKind.POLYGON
    assert big.skip_reason == "a polygon needs 3 to 50 points, got 51"
    assert line.usable


def test_annotation_and_prompt_kinds_take_the_same_points() -> None:
    """Every annotation kind that becomes a prompt has the prompt kind's point counts, so an
    annotation that reads well never fails as a prompt."""
    from dicom_io.gsps.annotation import POINT_COUNTS as ANNOTATION_COUNTS
    from sam2ct.prompts import POINT_COUNTS as PROMPT_COUNTS
    from sam2ct.prompts import PromptKind

    shared = {kind.value for kind in AnnotationKind} & {kind.value for kind in PromptKind}
    assert shared == {kind.value for kind in PromptKind}  # text is the only annotation extra
    for value in shared:
        assert ANNOTATION_COUNTS[AnnotationKind(value)] == PROMPT_COUNTS[PromptKind(value)], value


def test_display_units_with_displayed_area(tmp_path: Path, ct_image: Dataset) -> None:
    # Displayed area columns 101..300, rows 51..150 (1-based): 200 x 100 pixels from (100, 50).
    ends_px = np.array([[150.5, 75.5], [250.5, 125.5]])
    display = (ends_px - [100, 50]) / [200, 100]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(display.tolist(), units="DISPLAY")])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it], area=((101, 51), (300, 150)))
    a = only(read_gsps(path, ct_image))
    assert a.kind is AnnotationKind.LINE and a.units_converted_from_display
    np.testing.assert_allclose(pts(a), ends_px, atol=1e-4)


def _shown(rotation: int, flip: bool, width: int, height: int, col: int, row: int):
    """Independent forward model with numpy array ops: where pixel (col, row) of a
    width x height area appears after rotating clockwise then flipping, as DISPLAY units."""
    marked = np.zeros((height, width), dtype=bool)
    marked[row, col] = True
    shown = np.rot90(marked, k=-rotation // 90)  # k < 0: clockwise
    if flip:
        shown = np.fliplr(shown)
    r, c = np.argwhere(shown)[0]
    return (c + 0.5) / shown.shape[1], (r + 0.5) / shown.shape[0]


@pytest.mark.parametrize(("rotation", "flip"),
                         [(90, False), (180, False), (270, False), (0, True), (90, True)])
def test_display_units_rotation_and_flip(tmp_path: Path, ct_image: Dataset, rotation: int,
                                         flip: bool) -> None:
    tl = (41, 21)  # non-square area: 120 columns x 60 rows starting at pixel (40, 20)
    width, height = 120, 60
    local = [(10, 5), (90, 47)]  # pixel indices inside the area
    display = [_shown(rotation, flip, width, height, c, r) for c, r in local]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(display, units="DISPLAY")])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it], area=(tl, (160, 80)),
                      rotation=rotation, flip=flip)
    a = only(read_gsps(path, ct_image))
    expected = [(40 + c + 0.5, 20 + r + 0.5) for c, r in local]
    np.testing.assert_allclose(pts(a), expected, atol=1e-4)


def test_display_to_pixel_rejects_odd_rotation() -> None:
    with pytest.raises(ValueError, match="ImageRotation"):
        SpatialTransform(45)
    area = DisplayedArea((1, 1), (10, 10))
    np.testing.assert_allclose(display_to_pixel(np.array([[1.0, 1.0]]), area,
                                                SpatialTransform()), [[10.0, 10.0]])


# ------------------------------------------------------------------------------------------------
# Bad input of gsps-encodings.md: recorded, explained skips (never a crash)
# ------------------------------------------------------------------------------------------------


def test_referenced_image_missing(tmp_path: Path, ct_image: Dataset, volume) -> None:
    other = generate_uid()
    it = item(other, graphics=[graphic([(100, 100), (150, 120)])])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it])
    a = only(read_gsps(path, ct_image))
    assert "missing" in a.skip_reason and other in a.skip_reason
    loc = locate(only(read_gsps(path)), volume)
    assert not loc.usable and "not in series" in loc.skip_reason


def test_display_units_without_displayed_area(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(0.1, 0.1), (0.2, 0.3)], units="DISPLAY")])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it], with_area=False)
    a = only(read_gsps(path))
    assert "no displayed area" in a.skip_reason and not a.usable


def test_points_outside_the_image(tmp_path: Path, ct_image: Dataset, volume) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(500, 100), (530, 120)])])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it])
    assert "outside the image" in only(read_gsps(path, ct_image)).skip_reason
    loc = locate(only(read_gsps(path)), volume)
    assert "outside the image" in loc.skip_reason and loc.slice_index is not None


def test_edge_points_are_inside(tmp_path: Path, ct_image: Dataset, volume) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(0, 0), (512, 512)])])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [it])
    assert only(read_gsps(path, ct_image)).skip_reason is None
    loc = locate(only(read_gsps(path)), volume)
    assert loc.usable
    np.testing.assert_allclose(loc.points_voxel, [(-0.5, -0.5), (511.5, 511.5)])


def test_one_point_polyline(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(100, 100)])])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert "POLYLINE with 1 point" in a.skip_reason


def test_nan_coordinates(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID,
              graphics=[graphic([(100, float("nan")), (150, 120)]), graphic([(1, 1), (9, 9)])])
    anns = read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]))
    assert "NaN" in anns[0].skip_reason
    assert anns[0].to_dict()["points"][0] == [100.0, None]  # JSON-safe
    assert anns[1].usable  # the next annotation of the same item is not lost


def test_pr_referencing_an_mr_image(tmp_path: Path, ct_image: Dataset, volume) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(100, 100), (150, 120)])],
              sop_class=MRImageStorage)
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it], sop_class=MRImageStorage)))
    loc = locate(a, volume)
    assert "MR Image Storage" in loc.skip_reason and not loc.usable


def test_pr_referencing_a_localizer(tmp_path: Path, ct_image: Dataset) -> None:
    scout = copy.deepcopy(ct_image)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(100, 100), (150, 120)])])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), scout))
    assert "localizer" in a.skip_reason


def test_several_prs_for_one_image(tmp_path: Path, ct_image: Dataset) -> None:
    uid = ct_image.SOPInstanceUID
    line = graphic([(100, 100), (150, 120)])
    first = write_gsps(tmp_path / "s1.dcm", ct_image, [item(uid, graphics=[line])])
    second = write_gsps(tmp_path / "s2.dcm", ct_image, [
        item(uid, graphics=[graphic([(100.2, 100), (150, 120.1)]), graphic([(300, 300), (340, 300)])]),
    ])
    anns = mark_duplicates(read_gsps(first) + read_gsps(second))
    assert [a.usable for a in anns] == [True, False, True]
    assert anns[1].skip_reason.startswith(f"duplicate of {anns[0].identifier}")


def test_private_tags_only(tmp_path: Path, ct_image: Dataset, caplog) -> None:
    path = write_gsps(tmp_path / "a.dcm", ct_image, [])
    ds = pydicom.dcmread(path)
    del ds.GraphicAnnotationSequence
    block = ds.private_block(0x0071, "VENDOR GRAPHICS", create=True)
    block.add_new(0x01, "OB", b"\x00\x01\x02\x03")
    ds.save_as(path)
    with caplog.at_level(logging.INFO, logger="dicom_io.gsps.reader"):
        assert read_gsps(path) == []
    assert str(path) in caplog.text and "0071" in caplog.text


def test_item_with_private_tags_only_is_a_recorded_skip(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID)
    it.private_block(0x0071, "VENDOR GRAPHICS", create=True).add_new(0x01, "LO", "x")
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert "private tags only" in a.skip_reason


def test_non_pr_file_raises_naming_file_and_what_it_is(ct_files: list[Path]) -> None:
    with pytest.raises(DicomInputError, match=r"108\.dcm - is a CT Image Storage \(modality CT\)"):
        read_gsps(ct_files[1])


def test_non_dicom_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not dicom")
    with pytest.raises(DicomInputError, match="notes.txt - not a DICOM file"):
        read_gsps(path)


def test_annotation_validates_its_points() -> None:
    with pytest.raises(ValueError, match="a line needs 2 to 2 points"):
        Annotation("1.2", 0, AnnotationKind.LINE, "1.3", None, ((1.0, 2.0),))
    skipped = Annotation("1.2", 0, AnnotationKind.LINE, "1.3", None, ((1.0, 2.0),),
                         skip_reason="bad")
    assert not skipped.usable


# ------------------------------------------------------------------------------------------------
# locate: pixel -> voxel -> patient mm, against the real image's own geometry
# ------------------------------------------------------------------------------------------------


def test_locate_on_a_real_series(tmp_path: Path, ct_image: Dataset, volume) -> None:
    ends = [(100.5, 200.5), (300.0, 250.0)]
    it = item(ct_image.SOPInstanceUID, graphics=[graphic(ends)])
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]), ct_image))
    loc = locate(a, volume)
    assert loc.usable
    assert volume.slices[loc.slice_index].sop_instance_uid == ct_image.SOPInstanceUID
    np.testing.assert_allclose(loc.points_voxel, np.asarray(ends) - 0.5)
    # Independent: IPP + column * col spacing * row direction + row * row spacing * col direction.
    ipp = np.asarray(ct_image.ImagePositionPatient, dtype=float)
    iop = np.asarray(ct_image.ImageOrientationPatient, dtype=float)
    row_sp, col_sp = (float(v) for v in ct_image.PixelSpacing)
    vox = np.asarray(ends) - 0.5
    expected = ipp + vox[:, :1] * col_sp * iop[:3] + vox[:, 1:] * row_sp * iop[3:]
    np.testing.assert_allclose(loc.points_lps, expected, atol=1e-3)


def test_locate_keeps_the_annotation_skip(tmp_path: Path, ct_image: Dataset, volume) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(100, 100)])])
    loc = locate(only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it]))), volume)
    assert "POLYLINE with 1 point" in loc.skip_reason and loc.points_voxel is None


# ------------------------------------------------------------------------------------------------
# Cross-check with the synthetic study writer (dicom_io/synth): same spec, same reading
# ------------------------------------------------------------------------------------------------

SYNTH_ENCODINGS = ["agfa-arrow", "text-anchor-arrow", "compound-arrow", "layer-arrow", "line-mm",
                   "bidirectional", "display-units", "rotated", "ellipse", "circle"]


@pytest.mark.parametrize("encoding", SYNTH_ENCODINGS)
def test_synthetic_writer_encodings_read_back(tmp_path: Path, ct_image: Dataset,
                                              encoding: str) -> None:
    writer = pytest.importorskip("dicom_io.synth.gsps_writer")
    measure = pytest.importorskip("dicom_io.synth.measure")
    marks = measure.Marks(
        slice_index=0,
        long_axis=np.array([[200.0, 220.0], [240.0, 250.0]]),
        short_axis=np.array([[214.0, 243.0], [226.0, 227.0]]),  # crosses the long axis
        tip=np.array([230.0, 240.0]),
        tail=np.array([270.0, 285.0]),
    )
    uid = ct_image.SOPInstanceUID
    image = writer.ImageRef(uid, int(ct_image.Rows), int(ct_image.Columns),
                            float(ct_image.PixelSpacing[0]))
    drawing = writer.ENCODERS[writer.Encoding(encoding)](marks, image)
    for it in drawing.items:
        it.ReferencedImageSequence = Sequence([ref_image(uid)])
    path = write_gsps(tmp_path / "s.dcm", ct_image, drawing.items,
                      area=drawing.displayed_area, rotation=drawing.rotation)
    usable = [a for a in read_gsps(path, ct_image) if a.usable]
    assert [a.kind.value for a in usable] == list(writer.EXPECTED_KINDS[writer.Encoding(encoding)])
    np.testing.assert_allclose(pts(usable[0]), drawing.points, atol=1e-3)
    if drawing.length_mm is not None:
        assert usable[0].length_mm == pytest.approx(drawing.length_mm, rel=1e-4)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_malformed_item_is_a_recorded_skip(tmp_path: Path, ct_image: Dataset) -> None:
    good = item(ct_image.SOPInstanceUID, graphics=[graphic([(10, 10), (50, 10)])])
    broken = item(ct_image.SOPInstanceUID, graphics=[graphic([(1, 1), (5, 5)])])
    path = write_gsps(tmp_path / "a.dcm", ct_image, [broken, good])
    ds = pydicom.dcmread(path)
    ds.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedFrameNumber = 7
    ds.save_as(path)
    element = b"\x08\x00\x60\x11IS\x02\x007 "  # (0008,1160) IS "7 ", explicit VR LE
    raw = path.read_bytes()
    assert raw.count(element) == 1
    path.write_bytes(raw.replace(element, element[:-2] + b"x1"))  # not a number
    anns = read_gsps(path)
    assert "unreadable annotation item" in anns[0].skip_reason
    assert anns[-1].usable and anns[-1].kind is AnnotationKind.LINE


def test_invalid_rotation_skips_display_units_only(tmp_path: Path, ct_image: Dataset) -> None:
    uid = ct_image.SOPInstanceUID
    items = [item(uid, graphics=[graphic([(0.1, 0.1), (0.2, 0.3)], units="DISPLAY")]),
             item(uid, graphics=[graphic([(10, 10), (50, 10)])])]
    anns = read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, items, rotation=45))
    assert "ImageRotation" in anns[0].skip_reason and "45" in anns[0].skip_reason
    assert anns[1].usable


def test_item_on_several_images_is_skipped(tmp_path: Path, ct_image: Dataset) -> None:
    it = item(ct_image.SOPInstanceUID, graphics=[graphic([(10, 10), (50, 10)])])
    it.ReferencedImageSequence.append(ref_image(generate_uid()))
    a = only(read_gsps(write_gsps(tmp_path / "a.dcm", ct_image, [it])))
    assert "applies to 2 images" in a.skip_reason


def test_docstring_examples_hold() -> None:
    import doctest

    from dicom_io.gsps import annotation, geometry

    for module in (annotation, geometry):
        assert doctest.testmod(module).failed == 0
