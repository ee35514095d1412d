"""Retrieval split over several associations at once, from a real Orthanc: every instance arrives
bit-identical, the PACS never sees more than the cap of simultaneous connections from us (counted
by a TCP relay at its door, not by us), and a part whose association dies is retried for its
missing instances only.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from conftest import dciodvfy_errors, free_port, shared
from pacs_peers import GSPS_SOURCES, OUR_AET, OrthancPeer, make_study, payload

from dicom_io.files import TEMP_GLOB
from dicom_io.pacs import Backoff, PacsSettings, find_instances, retrieve, staged_path
from dicom_io.pacs.retrieve import MIN_PART

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: local
QUICK = Backoff(attempts=2, base=0.05, jitter=0.0)
CT_SLICES = 2 * MIN_PART + 4  # two C-GET/C-MOVE parts of CT, one of GSPS: three parts, cap two


class Relay:
    """A TCP relay in front of a peer: counts the connections open at once (``peak``) and can cut
    connection number ``cut`` (1-based) after ``after`` bytes from the peer, as a dying link."""

    def __init__(self, target: int, cut: int | None = None, after: int = 0) -> None:
        self.target, self.cut, self.after = target, cut, after
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.count = self.open = self.peak = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.count += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
                limit = self.after if self.count == self.cut else None
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, None, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None,
              from_client: bool) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data if limit is None else data[:limit - sent])
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):  # either side ending ends the connection
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if from_client:  # our socket is closed (or cut): no longer open at the PACS's door
            with self.lock:
                self.open -= 1

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def series_study(tmp_path_factory):
    """A study of CT_SLICES real LUNG1 CT slices and one GSPS (its own series), fresh UIDs."""
    ct = sorted(shared("lung1/LUNG1-001/ct").glob("*.dcm"), key=lambda p: int(p.stem))
    gsps = shared("lung1").parent / GSPS_SOURCES[0]
    return make_study(tmp_path_factory.mktemp("series"), ct[:CT_SLICES], "20260105", [gsps])


@pytest.fixture(scope="module")
def big_orthanc(tmp_path_factory, series_study, local):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    peer = OrthancPeer(tmp_path_factory.mktemp("orthanc-big"), free_port(), free_port(),
                       OUR_AET, local.store_port).start()
    peer.upload(list(series_study.files))
    yield peer
    peer.kill()


def _through(relay: Relay) -> PacsSettings:
    return PacsSettings("ORTHANC", "127.0.0.1", relay.port, max_associations=2, max_rate=100.0,
                        backoff=QUICK)


def _assert_staged_identical(staging: Path, study) -> None:
    for source in study.files:
        sent = payload(source)
        staged = staged_path(staging, study.study_uid, sent.SeriesInstanceUID,
                             sent.SOPInstanceUID)
        assert payload(staged.read_bytes()) == sent
    assert not list(staging.rglob(TEMP_GLOB))


@pytest.mark.parametrize("method", ["get", "move"])
def test_parallel_retrieval_is_bit_identical_and_capped(big_orthanc, series_study, local,
                                                        tmp_path, method) -> None:
    expected = find_instances(PacsSettings.parse(big_orthanc.address), local,
                              series_study.study_uid)
    assert len(expected) == len(series_study.files)
    relay = Relay(big_orthanc.dicom_port)
    try:
        report = retrieve(_through(relay), local, tmp_path, series_study.study_uid,
                          method=method, expected=expected, associations=3)
    finally:
        relay.close()
    assert report.complete and report.received == len(expected) and report.attempts == 1
    assert (report.duplicates, report.failed, report.unexpected) == (0, 0, 0)
    assert report.suboperations.completed == len(expected)
    assert relay.count == 3  # one association per part: two runs of CT, one of GSPS
    assert relay.peak == 2  # measured at the PACS's door, not by us
    _assert_staged_identical(tmp_path, series_study)
    sent = series_study.ct_files[0]
    staged = staged_path(tmp_path, series_study.study_uid, series_study.ct_series_uid,
                         payload(sent).SOPInstanceUID)
    assert dciodvfy_errors(staged) == dciodvfy_errors(sent)  # we add no findings


def test_cap_holds_for_two_parallel_retrievals_at_once(big_orthanc, series_study, local,
                                                       tmp_path) -> None:
    """Worker processes open the C-GET associations; the cap is this process's all the same."""
    expected = find_instances(PacsSettings.parse(big_orthanc.address), local,
                              series_study.study_uid)
    relay = Relay(big_orthanc.dicom_port)
    pacs, reports = _through(relay), []

    def one(staging: Path) -> None:
        reports.append(retrieve(pacs, local, staging, series_study.study_uid, method="get",
                                expected=expected, associations=2))

    threads = [threading.Thread(target=one, args=(tmp_path / str(n),)) for n in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        relay.close()
    assert len(reports) == 2 and all(r.complete and r.duplicates == 0 for r in reports)
    assert relay.count == 6 and relay.peak == 2
    for n in range(2):
        _assert_staged_identical(tmp_path / str(n), series_study)


def test_failed_part_is_retried_for_its_missing_instances_only(big_orthanc, series_study, local,
                                                               tmp_path) -> None:
    expected = find_instances(PacsSettings.parse(big_orthanc.address), local,
                              series_study.study_uid, series_study.ct_series_uid)
    relay = Relay(big_orthanc.dicom_port, cut=1, after=1_200_000)  # about two instances in
    try:
        report = retrieve(_through(relay), local, tmp_path, series_study.study_uid,
                          series_study.ct_series_uid, method="get", expected=expected,
                          associations=2)
    finally:
        relay.close()
    assert report.complete and report.received == len(expected) and report.attempts == 2
    assert len(report.errors) == 1  # the cut part's association, and nothing else
    assert report.duplicates == 0  # the retry asked only for what was missing
    assert report.failed == 0 and report.unexpected == 0
    # the cut part reported no final counts; the other part and the retry did, for all the rest
    assert MIN_PART <= report.suboperations.completed < len(expected)
    _assert_staged_identical(tmp_path, _ct_only(series_study))


def test_cut_move_part_still_ends_complete_and_identical(big_orthanc, series_study, local,
                                                        tmp_path) -> None:
    """C-MOVE: the part's request association dies after a few pending responses; whatever the
    PACS still pushes and the retry of what was missing add up to the whole series, intact."""
    expected = find_instances(PacsSettings.parse(big_orthanc.address), local,
                              series_study.study_uid, series_study.ct_series_uid)
    relay = Relay(big_orthanc.dicom_port, cut=1, after=1500)  # association set-up + a few C-MOVE-RSP
    try:
        report = retrieve(_through(relay), local, tmp_path, series_study.study_uid,
                          series_study.ct_series_uid, method="move", expected=expected,
                          associations=2)
    finally:
        relay.close()
    assert report.complete and report.received == len(expected) and report.attempts == 2
    assert len(report.errors) == 1 and report.failed == 0 and report.unexpected == 0
    _assert_staged_identical(tmp_path, _ct_only(series_study))


def _ct_only(study):
    return type(study)(study.study_uid, study.study_date, study.ct_series_uid, study.ct_files,
                       (), ())


def test_associations_must_be_positive(local, tmp_path) -> None:
    with pytest.raises(ValueError, match="'associations'"):
        retrieve(PacsSettings("ORTHANC", "127.0.0.1", 104), local, tmp_path, "1.2.3",
                 expected=[], associations=0)


def test_worker_processes_log_through_this_process(caplog) -> None:
    """A worker's warning reaches the parent's handlers; records below the parent's level don't."""
    import logging

    from dicom_io.pacs.parallel import worker_pool

    caplog.set_level(logging.WARNING, logger="dicom_io")
    worker_log = logging.getLogger("dicom_io.pacs.worker-test")
    with worker_pool(1) as workers:
        workers.submit(worker_log.debug, "not wanted").result()
        pid = workers.submit(os.getpid).result()
        workers.submit(worker_log.warning, "from worker %s", pid).result()
    records = [r for r in caplog.records if r.name == "dicom_io.pacs.worker-test"]
    assert [r.getMessage() for r in records] == [f"from worker {pid}"]
    assert pid != os.getpid() and records[0].process == pid
