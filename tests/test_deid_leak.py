"""Planted values through a real de-identified DICOM export: none of them comes out.

A synthetic CT (``dicom_io.synth``) gets a distinctive value in every attribute of PS3.15 Table
E.1-1 it can carry with its VR (the table read from its source by ``test_deid_profile``), plus
private attributes; its SEG is written from it (highdicom copies what it copies) and planted
alike; both are catalogued and exported with ``sam2ct export --format dicom --deidentify``.
Every exported file's bytes and decoded values are then searched for every planted value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors
from pydicom.dataset import Dataset
from test_deid_profile import plant_item, plant_value, row_tag, standard_rows, vr_of
from test_export import catalogue_series

from db import Recorder, open_catalog
from db.keys import EXPORT_KEY, catalog_key
from dicom_io.nifti import read_nifti
from dicom_io.seg import read_seg_masks
from dicom_io.synth import make_studies
from dicom_io.volume import load_series
from flows.cli import main

pytest_plugins = ["flow_fixtures"]

SLICES = 16
BURNED_IN = (0, SLICES - 1)  # CT slices marked BurnedInAnnotation YES
# dciodvfy errors de-identification by the table itself brings: Clinical Trial Protocol Ethics
# Committee Name is D (kept, Type 1C) while the Approval Number its condition names is X.
TABLE_ERRORS = ("Attribute present when condition unsatisfied (which may not be present "
                "otherwise) Type 1C Conditional Element=<ClinicalTrialProtocolEthicsCommitteeName>")
# Values highdicom checks when it copies them into the SEG: one of the enumerated values (found
# by attribute rather than by bytes, as they are not distinctive).
ENUMERATED = {int(pydicom.tag.Tag("PatientSex")): "O"}
PRIVATE = {0x00090010: ("LO", "PLANTCREATOR"), 0x00091001: ("LO", "PLANTPRIVATE"),
           0x00091002: ("UI", "2.25.9990424242"), 0x00291003: ("OB", b"PLANTBYTES")}


class Plants:
    """The values planted, by tag: ``plant`` puts one in every table row a dataset can carry."""

    def __init__(self) -> None:
        self.rows = sorted(standard_rows())
        self.by_tag: dict[int, set] = {}
        self.count = 0  # values planted, all files together
        self.skipped: dict[str, int] = {}

    def plant(self, ds: Dataset) -> None:
        """Plant in ``ds``: values of the table's rows and private attributes. An attribute the
        object already has as a UID or sequence keeps its own value (it identifies the object
        or its references) and that value counts as planted, as does the file meta's Media
        Storage SOP Instance UID; the command group (0000) is no part of a stored object."""
        for n, row in enumerate(self.rows):
            tag, vr = row_tag(row), vr_of(row_tag(row))
            if tag >> 16 == 0x0002 and tag in getattr(ds, "file_meta", {}):
                self._record(tag, ds.file_meta[tag].value)  # the object's own UID
            elif tag >> 16 in (0x0000, 0x0002):
                self._skip(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): command or file meta group")
            elif tag in ds and vr in ("UI", "SQ"):
                if vr == "UI":
                    self._record(tag, ds[tag].value)
            elif vr == "SQ":
                # its text in a table attribute (Person Name, D), as an X/Z/U* sequence keeps
                # what the profile keeps in its items (e.g. Code Meaning)
                item, uid, text = plant_item(n, "PersonName")
                ds.add_new(tag, vr, [item])
                self._record(tag, uid)
                self._record(tag, text)
            else:
                value = ENUMERATED.get(tag, plant_value(vr, n))
                ds.add_new(tag, vr, value)
                self._record(tag, value)
        for tag, (vr, value) in PRIVATE.items():
            ds.add_new(tag, vr, value)
            self._record(tag, value)

    def _record(self, tag: int, value: object) -> None:
        self.by_tag.setdefault(tag, set()).add(value if isinstance(value, bytes) else str(value))
        self.count += 1

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def patterns(self) -> set[bytes]:
        """The planted values as they would be encoded: every value of 6 bytes or more."""
        values = {v if isinstance(v, bytes) else v.encode() for vs in self.by_tag.values()
                  for v in vs}
        return {v.rstrip(b"\0") for v in values if len(v) >= 6}


def _plant_file(path: Path, plants: Plants, burned_in: bool = False) -> None:
    ds = pydicom.dcmread(path)
    plants.plant(ds)
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    ds.save_as(path, enforce_file_format=True)


def _build(root: Path, url: str, plants: Plants) -> dict:
    """A planted synthetic study, its planted SEG, catalogued at ``url``."""
    manifest = json.loads(make_studies(root / "studies", studies=1, seed=5, size=64,
                                       slices=SLICES).read_text())
    study = manifest["studies"][0]
    ct_dir = root / "studies" / study["ct_dir"]
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_dir.glob("*"))]
    for i, path in enumerate(sorted(ct_dir.glob("*.dcm"))):
        _plant_file(path, plants, burned_in=i in BURNED_IN)
    volume = load_series(ct_dir)
    masks = [read_nifti(root / "studies" / lesion["truth"])[0].astype(bool)
             for lesion in study["lesions"]]
    gsps = {g["lesion"]: g["sop_instance_uid"] for g in study["gsps"]}
    gsps_uids = [gsps[lesion["id"]] for lesion in study["lesions"]]
    engine = open_catalog(url)
    seg_path = catalogue_series(Recorder(engine), volume, masks, gsps_uids, root / "segs", ct_dir)
    engine.dispose()
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    identity = {str(originals[0].PatientName), str(originals[0].PatientID),
                *(str(h.SOPInstanceUID) for h in originals), volume.series_instance_uid,
                volume.study_instance_uid, str(originals[0].FrameOfReferenceUID),
                str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), *gsps_uids,
                *(str(s.TrackingID).split()[1] for s in seg.SegmentSequence)}
    _plant_file(seg_path, plants)
    return {"url": url, "ct_dir": ct_dir, "seg": seg_path, "identity": identity,
            "masks": masks, "volume": volume}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("deid-leak")
    plants = Plants()
    built = _build(root, f"sqlite:///{root / 'catalog.sqlite'}", plants)
    return {**built, "plants": plants, "root": root}


def _export(url: str, out: Path, capsys: pytest.CaptureFixture) -> dict:
    code = main(["export", "--out", str(out), "--format", "dicom", "--deidentify",
                 "--catalog", url, "--no-progress"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def _values(ds: Dataset) -> Iterator[tuple[int, object]]:
    """(tag, value) of every element, items of sequences and file meta included."""
    meta = getattr(ds, "file_meta", None)
    for element in [*(meta or [])] + list(ds):
        if element.VR == "SQ":
            for item in element.value:
                yield from _values(item)
        else:
            values = element.value if element.VM > 1 else [element.value]
            yield from ((int(element.tag), v) for v in values)


def _found(path: Path, plants: Plants, identity: set[str]) -> list[str]:
    """Planted or identifying values in a file: in its bytes, or as a decoded value."""
    data = path.read_bytes()
    found = [repr(p) for p in plants.patterns() | {i.encode() for i in identity} if p in data]
    if path.suffix != ".dcm":  # the manifest, the export's settings
        return found
    planted_text = {v for vs in plants.by_tag.values() for v in vs if isinstance(v, str)}
    for tag, value in _values(pydicom.dcmread(path)):
        text = value if isinstance(value, bytes) else str(value)
        if text in plants.by_tag.get(tag, ()) or (len(str(text)) >= 6 and text in planted_text):
            found.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {text!r}")
    return found


@pytest.mark.slow  # a synthetic study planted, segmented and exported (~15 s)
def test_no_planted_value_leaves_a_deidentified_export(
        planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plants: Plants = planted["plants"]
    summary = _export(planted["url"], tmp_path / "out", capsys)
    assert summary["written"] == 1 and summary["failed"] == []
    ct_files = sorted((tmp_path / "out").glob("case_*/CT/*.dcm"))
    seg_files = sorted((tmp_path / "out").glob("case_*/SEG/*.dcm"))
    assert len(ct_files) == SLICES - len(BURNED_IN) and len(seg_files) == 1
    assert summary["burned_in_left_out"] == len(BURNED_IN)
    exported = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    found = {p.name: _found(p, plants, planted["identity"]) for p in exported}
    leaks = sum(len(v) for v in found.values())
    distinct = sum(len(v) for v in plants.by_tag.values())
    with capsys.disabled():
        print(f"\nvalues planted: {plants.count} in {SLICES + 1} files ({distinct} distinct, "
              f"{len(plants.by_tag)} attributes); not plantable: {plants.skipped}; "
              f"files searched: {len(exported)}; values found: {leaks}")
    assert leaks == 0, {k: v[:10] for k, v in found.items() if v}
    assert len(plants.by_tag) > 600
    # the same search on the planted sources finds what was planted
    assert len(_found(planted["seg"], plants, planted["identity"])) > 600
    # de-identification brings no dciodvfy error of its own: each exported object has only the
    # errors its planted source already had (planted sequences hold no valid macro items)
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber): p
               for p in planted["ct_dir"].glob("*.dcm")}
    for path in ct_files + seg_files:
        out = pydicom.dcmread(path, stop_before_pixels=True)
        source = planted["seg"] if out.Modality == "SEG" else sources[str(out.InstanceNumber)]
        new = set(dciodvfy_errors(path)) - set(dciodvfy_errors(source))
        assert not {e for e in new if TABLE_ERRORS not in e}, (path.name, new)
    seg = pydicom.dcmread(seg_files[0])
    assert seg.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in seg.DeidentificationMethodCodeSequence] == ["113100"]


@pytest.mark.slow  # shares the planted study; builds it again in PostgreSQL
def test_uid_key_stays_with_the_catalog_and_maps_alike_across_exports(
        planted: dict, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pg = _build(tmp_path / "pg", pg_url, Plants())
    exported: dict[str, list[str]] = {}
    for name, url in (("sqlite", planted["url"]), ("postgresql", pg["url"])):
        engine = open_catalog(url, migrate=False)
        key = catalog_key(engine, EXPORT_KEY)
        engine.dispose()
        uids = []
        for out in (tmp_path / f"{name}-a", tmp_path / f"{name}-b"):
            assert _export(url, out, capsys)["written"] == 1
            files = sorted(out.glob("case_*/*/*.dcm"))
            uids.append([str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                         for p in files])
            for path in (p for p in out.rglob("*") if p.is_file()):  # the key, in no form
                data = path.read_bytes()
                assert key.encode() not in data and bytes.fromhex(key) not in data, path
        assert uids[0] == uids[1] and len(uids[0]) == SLICES - len(BURNED_IN) + 1
        exported[name] = uids[0]
    assert not set(exported["sqlite"]) & set(exported["postgresql"])  # a key per catalog
    # the SEG still places its masks on the de-identified CT through the remapped references
    case = next((tmp_path / "sqlite-a").glob("case_*"))
    volume = load_series(case / "CT")
    masks = read_seg_masks(next((case / "SEG").glob("*.dcm")), volume)
    truth = np.any(planted["masks"], axis=0)[1:-1]  # the burned-in first and last slices: out
    assert np.array_equal(np.any(list(masks.values()), axis=0), truth)


@pytest.mark.slow  # shares the planted study
def test_pixels_cleaned_exports_burned_in_images_and_says_so(
        planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["export", "--out", str(tmp_path), "--format", "dicom", "--deidentify",
                 "--pixels-cleaned", "--catalog", planted["url"], "--no-progress"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["burned_in_left_out"] == 0
    ct = [pydicom.dcmread(p, stop_before_pixels=True)
          for p in sorted(tmp_path.glob("case_*/CT/*.dcm"))]
    assert len(ct) == SLICES and {h.get("BurnedInAnnotation") for h in ct} <= {"NO", None}
    assert all([c.CodeValue for c in h.DeidentificationMethodCodeSequence] == ["113100", "113101"]
               for h in ct)
