"""The PACS client against two real peers started on loopback: Orthanc and DCMTK dcmqrscp.

Both hold the same corpus (real LUNG1 CT slices + real GSPS, fresh UIDs): Orthanc loaded over its
REST API, dcmqrscp over our own C-STORE. Orthanc runs with LimitFindResults=2 so that the January
window (3 studies) forces the automatic date split.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from conftest import shared
from pacs_peers import payload

from dicom_io.files import TEMP_GLOB
from dicom_io.pacs import (
    PacsSettings,
    QueryLevel,
    RetrieveMethod,
    discover_gsps,
    echo,
    find,
    find_instances,
    find_studies,
    retrieve,
    staged_path,
    store_files,
)

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc, qrscp, peer
JAN = (dt.date(2026, 1, 1), dt.date(2026, 1, 31))


def _pacs(peer) -> PacsSettings:
    return PacsSettings.parse(peer.address, max_rate=100.0)


def test_echo(peer, local) -> None:
    echo(_pacs(peer), local)


def test_discovery_finds_every_gsps_of_the_window_and_nothing_else(peer, local, corpus) -> None:
    found = discover_gsps(_pacs(peer), local, *JAN)
    assert sorted(g.sop_instance_uid for g in found) == sorted(corpus.a.gsps_uids
                                                               + corpus.b.gsps_uids)
    assert {g.study_instance_uid for g in found} == {corpus.a.study_uid, corpus.b.study_uid}
    feb = discover_gsps(_pacs(peer), local, dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert [g.sop_instance_uid for g in feb] == list(corpus.d.gsps_uids)


def test_discovery_runs_every_query_on_one_association(orthanc, local, corpus) -> None:
    """Counted by Orthanc: the window's C-FINDs (the split of its date window at Orthanc's
    result limit, then each study's PR series and their instances) take one association, so
    the PACS's rate limit on association openings costs a discovery one opening."""
    opened = f"Association Received from AET {local.ae_title} "
    before = orthanc.log.read_text().count(opened)
    found = discover_gsps(_pacs(orthanc), local, *JAN)
    assert len(found) == len(corpus.a.gsps_uids) + len(corpus.b.gsps_uids)
    assert orthanc.log.read_text().count(opened) - before == 1


def test_a_response_waits_for_its_request_not_the_association_thread(peer, local) -> None:
    """The lost matches of discovery: pynetdicom's association thread took C-FIND responses
    that arrived while it ran ("Received unexpected C-FIND service message") and dropped them.
    A response put on an established association's queue while that thread runs freely stays
    there for the send_c_*() that waits for it (on the old code it was gone within
    milliseconds), and a request still reaches it."""
    import time

    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    from dicom_io.pacs.association import open_association
    from dicom_io.pacs.query import build_context

    with open_association(_pacs(peer), local, [build_context(FindModel)]) as assoc:
        response = C_FIND()
        response.MessageIDBeingRespondedTo = 7
        response.AffectedSOPClassUID = FindModel
        response.Status = 0xFF00
        assert response.is_valid_response and not response.is_valid_request
        assoc.dimse.msg_queue.put((1, response))
        deadline = time.monotonic() + 0.3  # the thread polls its queue every millisecond
        while time.monotonic() < deadline and assoc.dimse.msg_queue.qsize() == 1:
            time.sleep(0.01)
        assert assoc.dimse.msg_queue.qsize() == 1, "the association thread took the response"
        assert assoc.dimse.get_msg(block=True) == (1, response)  # the waiting caller gets it
        assert assoc.dimse.get_msg(block=False) == (None, None)
        found = find(_pacs(peer), local, QueryLevel.STUDY, {"StudyDate": "20260101-20260131"})
        assert found.matches  # and a new association works as before


def test_find_levels(peer, local, corpus) -> None:
    studies = find_studies(_pacs(peer), local, *JAN)
    assert [s.study_instance_uid for s in studies] == [
        corpus.a.study_uid, corpus.c.study_uid, corpus.b.study_uid]  # sorted by date
    instances = find_instances(_pacs(peer), local, corpus.b.study_uid)
    assert len(instances) == len(corpus.b.files)
    series = find(_pacs(peer), local, QueryLevel.SERIES,
                  {"StudyInstanceUID": corpus.b.study_uid, "Modality": "CT"})
    assert [d.SeriesInstanceUID for d in series.matches] == [corpus.b.ct_series_uid]


def test_orthanc_result_limit_splits_the_date_window(orthanc, local, corpus, caplog) -> None:
    pacs = _pacs(orthanc)
    whole = find(pacs, local, QueryLevel.STUDY, {"StudyDate": "20260101-20260131"})
    assert not whole.complete and len(whole.matches) <= 2  # the limit is really hit
    with caplog.at_level(logging.INFO, logger="dicom_io.pacs.query"):
        studies = find_studies(pacs, local, *JAN)
    assert {s.study_instance_uid for s in studies} == {
        corpus.a.study_uid, corpus.b.study_uid, corpus.c.study_uid}
    assert "splitting" in caplog.text


@pytest.mark.parametrize("method", list(RetrieveMethod))
def test_retrieval_is_bit_identical(peer, local, corpus, tmp_path: Path, method) -> None:
    study = corpus.a
    report = retrieve(_pacs(peer), local, tmp_path, study.study_uid, study.ct_series_uid,
                      method=method)
    assert report.complete and report.attempts == 1
    assert (report.expected, report.received, report.duplicates, report.failed) == (3, 3, 0, 0)
    assert report.suboperations.completed == 3 and report.suboperations.failed == 0
    for original in study.ct_files:
        want = payload(original)
        got_path = staged_path(tmp_path, study.study_uid, study.ct_series_uid, want.SOPInstanceUID)
        got = payload(got_path)
        assert got.SOPInstanceUID == want.SOPInstanceUID
        assert got.PixelData == want.PixelData
        assert got == want  # every element of the dataset payload
    assert not list(tmp_path.rglob(TEMP_GLOB))


def test_retrieve_whole_study_with_gsps(peer, local, corpus, tmp_path: Path) -> None:
    study = corpus.b
    report = retrieve(_pacs(peer), local, tmp_path, study.study_uid, method="get")
    assert report.complete and report.received == len(study.files)
    again = retrieve(_pacs(peer), local, tmp_path, study.study_uid, method="move")
    assert (again.already_present, again.received, again.attempts) == (len(study.files), 0, 0)


def test_store_seg_then_get_it_back(peer, local, tmp_path: Path) -> None:
    """C-STORE of a DICOM SEG (dcmqi's, as ours would be) and a C-GET of it, payload-identical."""
    seg = shared("seg/dcmqi/liver.dcm")
    report = store_files(_pacs(peer), local, [seg])
    assert report.ok and report.stored == 1
    ds = payload(seg)
    back = retrieve(_pacs(peer), local, tmp_path, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                    method="get")
    assert back.complete and back.already_present + back.received == 1
    got = staged_path(tmp_path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert payload(got) == ds
