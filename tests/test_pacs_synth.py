"""A harvest window over synthetic studies (`sam2ct synth`) served by Orthanc and by dcmqrscp:
discovery finds exactly the window's GSPS, and only the CT series they reference come back,
identical to what was stored."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pacs_peers import payload

from dicom_io.pacs import PacsSettings, discover_gsps, harvest_window, store_files

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc, qrscp, peer
START = dt.date(2025, 6, 1)  # clear of the corpus's 2026 dates


@pytest.fixture(scope="session")
def synth(tmp_path_factory, orthanc, qrscp, local) -> dict:
    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("synth")
    manifest = json.loads(make_studies(out, studies=2, seed=11, size=64, slices=24,
                                       start_date=START).read_text())
    files = [p for p in out.rglob("*.dcm") if p.parent.name in ("ct", "gsps")]
    orthanc.upload(files)
    assert store_files(PacsSettings.parse(qrscp.address), local, files).ok
    return {"out": out, "studies": manifest["studies"]}


def _pacs(peer, method: str) -> PacsSettings:
    return PacsSettings.parse(peer.address, max_rate=100.0, method=method)


def test_discovery_matches_the_manifest(peer, local, synth) -> None:
    window = (START, START)
    found = discover_gsps(_pacs(peer, "move"), local, *window)
    want = {g["sop_instance_uid"] for s in synth["studies"][:1] for g in s["gsps"]}
    assert {g.sop_instance_uid for g in found} == want and len(found) == len(want)


def test_harvest_window_brings_only_referenced_series(peer, local, synth, tmp_path) -> None:
    method = "get" if peer.aet == "ORTHANC" else "move"
    studies = synth["studies"]
    report = harvest_window(_pacs(peer, method), local, tmp_path, START, START)
    assert report.complete
    assert {r.series_instance_uid for r in report.series} == {
        s["series_instance_uid"] for s in studies[:1]}
    assert len(report.gsps_files) == sum(len(s["gsps"]) for s in studies[:1])
    assert not (tmp_path / studies[1]["study_instance_uid"]).exists()
    for study in studies[:1]:
        ct = sorted((synth["out"] / study["ct_dir"]).glob("*.dcm"))
        staged = tmp_path / study["study_instance_uid"] / study["series_instance_uid"]
        assert len(list(staged.glob("*.dcm"))) == len(ct)
        for original in ct:
            want = payload(original)
            assert payload(staged / f"{want.SOPInstanceUID}.dcm") == want
    again = harvest_window(_pacs(peer, method), local, tmp_path, START, START)
    assert again.complete and sum(r.received for r in again.retrievals) == 0
    assert all(r.attempts == 0 for r in again.retrievals)  # nothing asked of the PACS twice
    assert Path(tmp_path).is_dir()
