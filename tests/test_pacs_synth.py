"""A harvest window over synthetic studies (`sam2ct synth`) served by Orthanc and by dcmqrscp:
discovery finds exactly the window's GSPS, and only the CT series they reference come back,
identical to what was stored."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import pytest
from pacs_peers import payload

from dicom_io.gsps import read_target
from dicom_io.pacs import PacsSettings, discover_gsps, retrieve, staged_path

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc, qrscp, peer
START = dt.date(2025, 6, 1)  # clear of the corpus's 2026 dates


@pytest.fixture(scope="session")
def synth(tmp_path_factory, orthanc, qrscp, local) -> dict:
    from pacs_fixtures import load_qrscp  # a plugin of this module: imported once registered

    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("synth")
    manifest = json.loads(make_studies(out, studies=2, seed=11, size=64, slices=24,
                                       start_date=START).read_text())
    files = [p for p in out.rglob("*.dcm") if p.parent.name in ("ct", "gsps")]
    orthanc.upload(files)
    load_qrscp(qrscp, local, files)
    return {"out": out, "studies": manifest["studies"]}


def _pacs(peer, method: str) -> PacsSettings:
    return PacsSettings.parse(peer.address, max_rate=100.0, method=method)


def test_discovery_matches_the_manifest(peer, local, synth) -> None:
    window = (START, START)
    found = discover_gsps(_pacs(peer, "move"), local, *window)
    want = {g["sop_instance_uid"] for s in synth["studies"][:1] for g in s["gsps"]}
    assert {g.sop_instance_uid for g in found} == want and len(found) == len(want)


def _stage_window(pacs: PacsSettings, local, staging: Path) -> list:
    """What the harvest's tasks do at the DICOM level: discover the window's GSPS, retrieve
    them series by series against the discovery's list, read which CT series they are drawn
    on, retrieve only those. Returns every retrieval's report."""
    found = discover_gsps(pacs, local, START, START)
    by_series = defaultdict(list)
    for match in found:
        by_series[(match.study_instance_uid, match.series_instance_uid)].append(match)
    reports = [retrieve(pacs, local, staging, study, series, expected=items)
               for (study, series), items in by_series.items()]
    targets = {(t.study_instance_uid, s) for t in (
        read_target(staged_path(staging, m.study_instance_uid, m.series_instance_uid,
                                m.sop_instance_uid)) for m in found)
        for s in t.series_instance_uids}
    return reports + [retrieve(pacs, local, staging, study, series)
                      for study, series in sorted(targets)]


def test_a_window_brings_only_the_series_its_gsps_are_drawn_on(peer, local, synth,
                                                                tmp_path) -> None:
    method = "get" if peer.aet == "ORTHANC" else "move"
    first, second = synth["studies"][:2]
    reports = _stage_window(_pacs(peer, method), local, tmp_path)
    assert reports and all(r.complete for r in reports)
    study = tmp_path / first["study_instance_uid"]
    assert not (tmp_path / second["study_instance_uid"]).exists()
    ct = sorted((synth["out"] / first["ct_dir"]).glob("*.dcm"))
    staged = study / first["series_instance_uid"]
    assert len(list(staged.glob("*.dcm"))) == len(ct)
    for original in ct:
        want = payload(original)
        assert payload(staged / f"{want.SOPInstanceUID}.dcm") == want
    others = [p for p in study.rglob("*.dcm") if p.parent != staged]  # the GSPS, nothing else
    assert {p.stem for p in others} == {g["sop_instance_uid"] for g in first["gsps"]}
    again = _stage_window(_pacs(peer, method), local, tmp_path)
    assert all(r.complete for r in again) and sum(r.received for r in again) == 0
    assert all(r.attempts == 0 for r in again)  # nothing asked of the PACS twice
