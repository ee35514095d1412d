"""PS3.15 Table E.1-1 (Basic Profile), attribute by attribute, against the table itself.

The test's copy of the table is read here straight from the source ``dicom_io.deid`` names
(dicom-anonymizer's ``dicomfields_2026c``), grouped by this test's own reading of the source's
group names, never through ``dicom_io.deid``'s loader or tables. Each row gets a distinctive
value of its VR in a dataset, the dataset is de-identified, and what became of the value must be
an outcome the row's action code allows.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import re
import tomllib

import pydicom
import pytest
from conftest import REPO
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset

from dicom_io.deid import (
    PROFILE_EDITION,
    PROFILE_MODULE,
    Action,
    Deidentifier,
    UidMapper,
    basic_profile,
    deidentify_file,
    resolve,
)

SOURCE_PACKAGE = "dicom-anonymizer"
# The source's group names (its README's table) and the Table E.1-1 code each one holds.
GROUP_CODES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
               "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D",
               "X_Z_U_STAR_TAGS": "X/Z/U*"}
# What a code allows to become of a value (PS3.15 Table E.1-1 legend): removed (X), empty (Z),
# a dummy that differs (D), the keyed UID (U), a sequence kept with its UIDs remapped (U*).
ALLOWED = {"X": {"X"}, "Z": {"Z"}, "D": {"D"}, "U": {"U"}, "X/Z": {"X", "Z"},
           "X/D": {"X", "D"}, "Z/D": {"Z", "D"}, "X/Z/D": {"X", "Z", "D"},
           "X/Z/U*": {"X", "Z", "U*"}}
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def standard_rows() -> dict[tuple[int, ...], str]:
    """Table E.1-1's Basic Profile column as the source publishes it: row -> action code."""
    source = importlib.import_module(PROFILE_MODULE)
    rows: dict[tuple[int, ...], str] = {}
    for group, code in GROUP_CODES.items():
        for row in getattr(source, group):
            assert rows.setdefault(tuple(row), code) == code, f"{row} in two groups"
    return rows


def row_tag(row: tuple[int, ...]) -> int:
    """A concrete tag of a row; a repeating-group row (group, element, group mask, element
    mask) gets its second group and element 0x3000 where the row leaves the element free."""
    group, element = row[0], row[1]
    if len(row) == 4:
        group += 0x0002
        element = element if row[3] else 0x3000
    return (group << 16) | element


def vr_of(tag: int) -> str:
    """The tag's VR in pydicom's dictionary (the first of "US or SS"); UN when unknown."""
    if tag >> 16 & 0xFF00 == 0x5000:
        return "OB"  # curve data
    try:
        return dictionary_VR(tag if tag >> 16 & 0xFF00 != 0x6000 else tag & 0xFF00FFFF).split(
            " or ")[0]
    except KeyError:
        return "UN"  # newer than pydicom's dictionary: a writer carries it as UN


def plant_value(vr: str, n: int) -> object:
    """Value number ``n`` of a VR: distinctive (contains or is unique to ``n``) and valid."""
    text = f"PLANT{n:04d}"
    day = (dt.date(1931, 1, 1) + dt.timedelta(days=n)).strftime("%Y%m%d")
    values = {"AE": text, "CS": text, "SH": text, "LO": text, "LT": text, "ST": text,
              "UT": text, "UC": text, "PN": f"{text}^PLANTED", "DA": day,
              "TM": f"101010.{n:04d}", "DT": f"{day}101010.{n:04d}", "AS": f"{n % 1000:03d}D",
              "IS": str(900000 + n), "DS": f"{9000 + n}.25", "US": 30000 + n, "SS": 20000 + n,
              "UL": 700000000 + n, "SL": 600000000 + n, "UV": 800000000 + n,
              "SV": 500000000 + n, "FL": 7000.5 + n, "FD": 8000.5 + n, "AT": 0x00090000 + n,
              "UI": f"2.25.999{n:06d}", "UR": f"http://plant{n:04d}.invalid/"}
    return values.get(vr, f"{text}PL".encode())  # OB, OW, OF, OD, OL, OV, UN: even length


def plant_item(n: int, text: str = "CodeMeaning") -> tuple[Dataset, str, str]:
    """A sequence item: a reference (its instance UID planted) and a planted ``text``
    attribute (LO or PN)."""
    item = Dataset()
    item.ReferencedSOPClassUID = CT_CLASS
    item.ReferencedSOPInstanceUID = plant_value("UI", n)
    setattr(item, text, plant_value("LO", n))
    return item, item.ReferencedSOPInstanceUID, str(item[text].value)


def outcomes(ds: Dataset, tag: int, planted: object, mapper: UidMapper) -> set[str]:
    """What became of a planted value: the subset of X, Z, D, U, U* its state satisfies."""
    if tag not in ds:
        return {"X"}
    element = ds[tag]
    if element.VR == "SQ":
        if not element.value:
            return {"Z"}
        uid, text = planted
        item = element.value[0]
        remapped = item.get("ReferencedSOPInstanceUID") == mapper(uid)
        meaning = item.get("CodeMeaning")
        return ({"U*"} if remapped and meaning == text else set()) | (
            {"D"} if remapped and meaning and meaning != text else set())
    value = element.value
    if value in (None, "", b"") or value == []:
        return {"Z"}
    found = {"D"} if value != planted else set()
    return found | ({"U"} if value == mapper(str(planted)) else set())


def test_every_row_of_table_e1_1_gets_its_basic_profile_action(
        capsys: pytest.CaptureFixture) -> None:
    rows = standard_rows()
    mapper = UidMapper(b"profile-test")
    deid = Deidentifier(mapper)
    table = basic_profile()
    codes_equal = matched = 0
    mismatches = []
    for n, (row, code) in enumerate(sorted(rows.items())):
        tag = row_tag(row)
        codes_equal += table.code(tag) == code
        vr = vr_of(tag)
        ds = Dataset()
        if vr == "SQ":
            item, uid, text = plant_item(n)
            ds.add_new(tag, vr, [item])
            planted: object = (uid, text)
        elif tag >> 16 == 0x0002:  # file meta (Media Storage SOP Instance UID)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.add_new(tag, vr, plant_value(vr, n))
            planted = plant_value(vr, n)
        else:
            planted = plant_value(vr, n)
            ds.add_new(tag, vr, planted)
        deid.apply(ds)
        where = ds.file_meta if tag >> 16 == 0x0002 else ds
        if outcomes(where, tag, planted, mapper) & ALLOWED[code]:
            matched += 1
        else:
            mismatches.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {code}")
    with capsys.disabled():
        print(f"\nPS3.15 {PROFILE_EDITION} Table E.1-1: {len(rows)} rows; codes equal "
              f"{codes_equal}; Basic Profile actions matched {matched}")
    assert len(rows) == len(table) > 600
    assert codes_equal == len(rows)
    assert not mismatches, f"{len(mismatches)} rows not de-identified as the table says: " \
                           f"{mismatches[:20]}"
    assert matched == len(rows)


def test_the_table_source_is_the_pinned_edition() -> None:
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(p for p in pins if p.startswith(SOURCE_PACKAGE))
    assert pin == f"{SOURCE_PACKAGE}=={importlib.metadata.version(SOURCE_PACKAGE)}"
    assert PROFILE_MODULE.endswith(PROFILE_EDITION)
    # the rows the hand-typed list of the past lacked, among others
    table = basic_profile()
    for keyword in ("ConsultingPhysicianName", "PatientTelecomInformation", "ReviewDate",
                    "ReviewTime", "SourceSerialNumber", "DateOfLastCalibration",
                    "StationAETitle", "ReasonForVisit", "ContributionDateTime",
                    "ClinicalTrialSubjectID", "ClinicalTrialSponsorName"):
        assert table.code(pydicom.tag.Tag(keyword)) is not None, keyword


def test_compound_codes_on_values_and_sequences() -> None:
    assert resolve("X/Z/D") is Action.DUMMY and resolve("X") is Action.REMOVE
    assert resolve("X/Z", sequence=True) is Action.REMOVE
    assert resolve("X/Z/U*", sequence=True) is Action.ITEMS
    with pytest.raises(ValueError, match="Invalid profile action code"):
        resolve("Q")
    mapper = UidMapper(b"k")
    ds = Dataset()
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = CT_CLASS, "1.2.3.4.5.6"
    ds.ReferencedStudySequence = [study]  # X/Z, Type 3 in CT: an empty one would be invalid
    ds.AcquisitionContextSequence = []  # X/Z already empty: Type 2 where it is, kept
    ds.AcquisitionDate = "20250101"  # X/Z on a value: emptied
    ds.InstitutionName = "General"  # X/Z/D: dummy
    Deidentifier(mapper).apply(ds)
    assert "ReferencedStudySequence" not in ds
    assert "AcquisitionContextSequence" in ds and len(ds.AcquisitionContextSequence) == 0
    assert "AcquisitionDate" in ds and not ds.AcquisitionDate
    assert ds.InstitutionName == "ANONYMOUS"


def test_d_on_a_sequence_replaces_every_value_in_its_items() -> None:
    mapper = UidMapper(b"k")
    person = Dataset()
    person.CodeValue, person.CodingSchemeDesignator = "JD1947", "99HOSP"
    person.CodeMeaning = "DOE^JOHN"
    ds = Dataset()
    ds.PersonIdentificationCodeSequence = [person]  # D
    ds.add_new(0x00091010, "LO", "private")
    Deidentifier(mapper).apply(ds)
    item = ds.PersonIdentificationCodeSequence[0]
    assert {item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning} == {"ANONYMOUS"}
    assert 0x00091010 not in ds


def test_uids_remapped_in_sequences_text_and_file_meta() -> None:
    mapper = UidMapper(b"k")
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3.4.5", CT_CLASS
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT_CLASS, "1.2.3.4.6"
    ds.SourceImageSequence = [ref]
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4.7"
    ds.ReferencedSeriesSequence = [series]  # not in the table: its items are de-identified
    ds.SoftwareVersions = "highdicom 0.28.2"  # no UID in it: kept as it is
    ds.ImageComments = "x"  # X
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM_4"
    Deidentifier(mapper, pseudonym="abc123").apply(ds)
    assert (ds.PatientName, ds.PatientID) == ("abc123", "abc123")
    assert ds.SOPInstanceUID == mapper("1.2.3.4.5") == ds.file_meta.MediaStorageSOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.SOPClassUID == CT_CLASS and ds.SourceImageSequence[0].ReferencedSOPClassUID == CT_CLASS
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == mapper("1.2.3.4.6")
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == mapper("1.2.3.4.7")
    assert ds.SoftwareVersions == "highdicom 0.28.2" and "ImageComments" not in ds
    assert ds.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert mapper("1.2.3") != UidMapper(b"other")("1.2.3")
    assert len(mapper("1.2.3")) <= 64 and mapper("1.2.3").startswith("2.25.")


def test_seg_text_made_from_the_gsps_is_cleaned() -> None:
    gsps_uid = "1.2.826.0.1.3680043.8.498.1234567890"
    mapper = UidMapper(b"k")
    ds = Dataset()
    free_text, drawn, tracked = Dataset(), Dataset(), Dataset()
    free_text.SegmentLabel = "Mr Smith, liver"  # the first line of a GSPS's own text
    free_text.TrackingID = "GSPS 3c8c5dbd annotation 0"  # a hash of the GSPS UID
    drawn.SegmentLabel = "Lesion, bidirectional 28 x 7.5 mm"
    drawn.TrackingID = f"{gsps_uid}#1"  # the form of older SEGs: the UID itself
    tracked.TrackingID = f"...{gsps_uid[-20:]}#2"  # cut to fit 64 characters
    ds.SegmentSequence = [free_text, drawn, tracked]
    Deidentifier(mapper).apply(ds)
    first, second, third = ds.SegmentSequence
    assert first.SegmentLabel == "Lesion" and second.SegmentLabel == drawn.SegmentLabel
    assert re.fullmatch(r"GSPS [0-9a-f]{8} annotation 0", first.TrackingID)
    assert first.TrackingID != "GSPS 3c8c5dbd annotation 0"
    assert second.TrackingID == f"{mapper(gsps_uid)}#1"
    assert gsps_uid[-20:] not in third.TrackingID and third.TrackingID.endswith("#2")


def test_burned_in_annotation_is_left_out_unless_cleaned(tmp_path) -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_CLASS, "1.2.3.4.5"
    ds.BurnedInAnnotation = "YES"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        CT_CLASS, "1.2.3.4.5")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    source = tmp_path / "in.dcm"
    ds.save_as(source, enforce_file_format=True)
    mapper = UidMapper(b"k")
    assert deidentify_file(source, tmp_path / "out.dcm", Deidentifier(mapper)) is None
    assert not (tmp_path / "out.dcm").exists()
    written = deidentify_file(source, tmp_path / "out.dcm",
                              Deidentifier(mapper, pixels_cleaned=True))
    clean = pydicom.dcmread(written)
    assert clean.BurnedInAnnotation == "NO"
    assert [c.CodeValue for c in clean.DeidentificationMethodCodeSequence] == ["113100",
                                                                               "113101"]
