"""De-identified DICOM export of a real CT (LUNG1-001) and its SEG (the profile itself:
tests/test_deid_profile.py; planted values: tests/test_deid_leak.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors
from test_export import catalogue_series

from db import Recorder, open_catalog
from dicom_io.seg import read_seg_masks
from dicom_io.volume import load_series
from flows.cli import main

BIRTH_DATE = "19470304"  # added to the copied CT: LUNG1's own birth date is empty
GSPS_UID = "1.2.826.0.1.3680043.9.1"  # the SEG's segment comes from this presentation state


@pytest.fixture(scope="module")
def lung1_catalog(lung1_001: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of 40 contiguous slices of LUNG1-001's CT (a birth date added: its own is empty),
    a SEG of a sphere on it, catalogued. 40 of 134 slices keep the test fast."""
    root = tmp_path_factory.mktemp("lung1-export")
    ct_dir = root / "ct"
    ct_dir.mkdir()
    headers = [pydicom.dcmread(p, stop_before_pixels=True)
               for p in (lung1_001 / "ct").glob("*.dcm")]
    headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    for header in headers[40:80]:
        source = Path(header.filename)
        ds = pydicom.dcmread(source)
        ds.PatientBirthDate = BIRTH_DATE
        ds.save_as(ct_dir / source.name)
    volume = load_series(ct_dir)
    z, y, x = np.ogrid[: volume.array.shape[0], : volume.array.shape[1], : volume.array.shape[2]]
    mask = (z - 20) ** 2 * 9 + (y - 260) ** 2 + (x - 300) ** 2 <= 15**2
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    engine = open_catalog(url)
    seg_path = catalogue_series(Recorder(engine), volume, [mask], [GSPS_UID],
                                root / "segs", ct_dir)
    engine.dispose()
    first = pydicom.dcmread(volume.slices[0].path, stop_before_pixels=True)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    secrets = {str(first.PatientName), str(first.PatientID), BIRTH_DATE, GSPS_UID,
               volume.study_instance_uid, volume.series_instance_uid,
               str(first.FrameOfReferenceUID), str(seg.SOPInstanceUID),
               str(seg.SeriesInstanceUID), *(s.sop_instance_uid for s in volume.slices)}
    return {"url": url, "mask": mask, "secrets": secrets, "seg": seg_path}


@pytest.mark.slow
def test_deidentified_dicom_export_hides_identity_and_keeps_references(
        lung1_catalog: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    code = main(["export", "--out", str(out), "--format", "dicom", "--deidentify",
                 "--catalog", lung1_catalog["url"], "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 1 and summary["failed"] == []
    exported = [p for p in out.rglob("*") if p.is_file()]
    ct_files = sorted(out.glob("case_*/CT/*.dcm"))
    seg_files = sorted(out.glob("case_*/SEG/*.dcm"))
    assert len(ct_files) == 40 and len(seg_files) == 1
    for path in exported:
        data = path.read_bytes()
        leaked = [s for s in lung1_catalog["secrets"] if s.encode() in data]
        assert not leaked, f"{path.name} still holds {len(leaked)} identifying value(s)"
    seg = pydicom.dcmread(seg_files[0])
    assert seg.PatientIdentityRemoved == "YES"
    assert seg.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for path in seg_files + ct_files:  # the source's private-tag errors went too
        assert dciodvfy_errors(path) == [], path.name
    volume = load_series(out / ct_files[0].parent.relative_to(out))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    masks = read_seg_masks(seg_files[0], volume)  # placed through the remapped references
    assert np.array_equal(masks[1], lung1_catalog["mask"])


@pytest.mark.slow
def test_identified_dicom_export_copies_files(lung1_catalog: dict, tmp_path: Path) -> None:
    engine = open_catalog(lung1_catalog["url"], migrate=False)
    from db.export import export_dataset

    report = export_dataset(engine, tmp_path, "dicom", progress=False)
    engine.dispose()
    assert report.written == 1
    seg_copy = next(tmp_path.glob("case_*/SEG/*.dcm"))
    assert seg_copy.read_bytes() == lung1_catalog["seg"].read_bytes()
