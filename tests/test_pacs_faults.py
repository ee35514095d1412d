"""Fault tests of the PACS client, each ending with nothing lost and nothing counted that did not
arrive: PACS down, association rejected, PACS killed mid C-MOVE then resumed, DIMSE timeout,
duplicate deliveries, write error in staging, caller not on our allowlist, busy PACS, politeness.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import dciodvfy_errors, free_port
from pacs_peers import OUR_AET, payload, scaled
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_io.files import TEMP_GLOB
from dicom_io.pacs import (
    AssociationRejectedError,
    Backoff,
    LocalAE,
    PacsError,
    PacsSettings,
    PacsUnavailableError,
    QueryLevel,
    RetrievalIncompleteError,
    StorageSCP,
    StoreOutcome,
    Timeouts,
    TlsOptions,
    echo,
    find,
    find_instances,
    retrieve,
    staged_path,
    store_files,
)

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc, qrscp, peer, fresh_orthanc
QUICK = Backoff(attempts=2, base=0.05, jitter=0.0)
PATIENT = Backoff(attempts=5, base=0.05, jitter=0.0)


def _pacs(peer, **options) -> PacsSettings:
    return PacsSettings.parse(peer.address, **{"max_rate": 100.0, "backoff": QUICK, **options})


def _staged(staging: Path) -> list[Path]:
    return sorted(staging.rglob("*.dcm"))


def _assert_identical(staging: Path, originals) -> None:
    """Every staged file is one of ``originals``, payload for payload."""
    by_uid = {payload(p).SOPInstanceUID: p for p in originals}
    for path in _staged(staging):
        got = payload(path)
        assert got == payload(by_uid[got.SOPInstanceUID])
    assert not list(staging.rglob(TEMP_GLOB))


def test_pacs_not_running(local, tmp_path: Path) -> None:
    pacs = PacsSettings.parse(f"NOBODY@127.0.0.1:{free_port()}", backoff=QUICK)
    with pytest.raises(PacsUnavailableError, match="cannot connect"):
        echo(pacs, local)
    with pytest.raises(PacsUnavailableError):
        find_instances(pacs, local, "1.2.3")
    expected = [_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")]
    report = retrieve(pacs, local, tmp_path, "1.2.3", expected=expected, method="get")
    assert (report.received, report.missing) == (0, ("1.2.3.4.5",))
    assert "cannot connect" in report.errors[-1]
    with pytest.raises(RetrievalIncompleteError, match="1 of 1 instances missing"):
        report.raise_if_incomplete()
    assert _staged(tmp_path) == []


def _instance(study: str, series: str, sop: str):
    from dicom_io.pacs import InstanceMatch

    return InstanceMatch(study, series, sop, "1.2.840.10008.5.1.4.1.1.2")


def test_association_rejected(peer, local, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_io.pacs"):
        with pytest.raises(AssociationRejectedError, match="Calling AE title not recognised"
                           "|Called AE title not recognised"):
            echo(_pacs(peer, backoff=PATIENT), LocalAE("STRANGER", local.store_port))
        wrong_called = PacsSettings.parse(f"NOT_{peer.aet}@127.0.0.1:{peer.address.split(':')[-1]}",
                                          backoff=PATIENT)
        with pytest.raises(AssociationRejectedError, match="Called AE title not recognised"):
            echo(wrong_called, local)
    # a permanent rejection is never retried (dcmqrscp sometimes drops the connection instead of
    # sending its A-ASSOCIATE-RJ: that one is retried, as any lost connection is)
    retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert not [m for m in retried if "rejected the association" in m]


def test_pacs_killed_mid_move_then_resumed(fresh_orthanc, local, corpus, tmp_path) -> None:
    study = corpus.a
    pacs = _pacs(fresh_orthanc)
    expected = find_instances(pacs, local, study.study_uid, study.ct_series_uid)

    def kill_after_first(delivery) -> None:
        if delivery.outcome is StoreOutcome.STORED and fresh_orthanc.proc is not None:
            fresh_orthanc.kill()

    staging = tmp_path / "staging"
    with StorageSCP(local, staging, extra_callers=[fresh_orthanc.aet],
                    on_delivery=kill_after_first) as scp:
        first = retrieve(pacs, local, staging, study.study_uid, study.ct_series_uid,
                         expected=expected, scp=scp, attempts=2)
    assert first.received == len(_staged(staging)) == 1
    assert len(first.missing) == len(expected) - 1 and first.errors
    _assert_identical(staging, study.ct_files)

    fresh_orthanc.start()  # same storage folder: the PACS comes back with its data
    second = retrieve(pacs, local, staging, study.study_uid, study.ct_series_uid,
                      expected=expected)
    assert second.complete and second.already_present == 1
    assert second.received == len(expected) - 1 == second.suboperations.completed
    assert second.duplicates == 0  # only the missing ones were asked for
    assert len(_staged(staging)) == len(expected)
    _assert_identical(staging, study.ct_files)


def _associations_on(port: int) -> list:
    """Associations this process has accepted on ``port`` that are still open."""
    from pynetdicom.association import Association

    return [t for t in threading.enumerate() if isinstance(t, Association) and t.is_alive()
            and t.is_acceptor and t.local["port"] == port]


def test_dimse_timeout_then_resume(fresh_orthanc, local, corpus, tmp_path) -> None:
    """Orthanc frozen (SIGSTOP) after its first instance: our C-MOVE ends on its DIMSE timeout
    with that instance; a C-GET then brings the two missing. The timeouts are stretched on a
    loaded machine (Orthanc must not seem frozen before it is). Our SCP, once stopped, has
    closed Orthanc's storage association: thawed, Orthanc cannot send the next instance on it
    (pynetdicom's shutdown alone left it open: on a loaded machine it was staged)."""
    study = corpus.a
    pacs = _pacs(fresh_orthanc, timeouts=Timeouts(dimse=scaled(1.5), network=scaled(3.0),
                                                  acse=scaled(5.0)))
    expected = find_instances(pacs, local, study.study_uid, study.ct_series_uid)

    def freeze_after_first(delivery) -> None:
        if delivery.outcome is StoreOutcome.STORED:
            os.kill(fresh_orthanc.proc.pid, signal.SIGSTOP)

    staging = tmp_path / "staging"
    with StorageSCP(local, staging, extra_callers=[fresh_orthanc.aet],
                    on_delivery=freeze_after_first, network_timeout=scaled(3.0)) as scp:
        first = retrieve(pacs, local, staging, study.study_uid, study.ct_series_uid,
                         expected=expected, scp=scp, attempts=1)
    assert not _associations_on(local.store_port)
    os.kill(fresh_orthanc.proc.pid, signal.SIGCONT)
    assert "DIMSE timeout" in first.errors[0]
    assert first.received == len(_staged(staging)) == 1 and len(first.missing) == 2
    second = retrieve(pacs, local, staging, study.study_uid, study.ct_series_uid,
                      expected=expected, method="get")
    assert second.complete and second.received == 2 and second.already_present == 1
    _assert_identical(staging, study.ct_files)


def test_duplicate_deliveries_are_ignored(orthanc, local, corpus, tmp_path) -> None:
    study = corpus.a
    pacs = _pacs(orthanc)
    with StorageSCP(local, tmp_path, extra_callers=[orthanc.aet]) as scp:
        report = retrieve(pacs, local, tmp_path, study.study_uid, study.ct_series_uid, scp=scp)
        assert report.complete and report.received == 3
        before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _staged(tmp_path)}
        series = orthanc.rest("/tools/lookup", study.ct_series_uid.encode(), "POST")[0]["ID"]
        for _ in range(2):  # the PACS pushes the whole series again, twice
            orthanc.rest("/modalities/sam2ct/store", series.encode(), "POST")
        assert scp.writer.counts[StoreOutcome.DUPLICATE] == 6
        assert scp.writer.counts[StoreOutcome.STORED] == 3
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _staged(tmp_path)} == before
    again = retrieve(pacs, local, tmp_path, study.study_uid, study.ct_series_uid)
    assert (again.received, again.already_present, again.attempts) == (0, 3, 0)


@pytest.mark.parametrize("method", ["move", "get"])
def test_write_error_in_staging(orthanc, local, corpus, tmp_path, method) -> None:
    study = corpus.a
    pacs = _pacs(orthanc)
    (tmp_path / study.study_uid).write_text("not a folder")  # every write below fails
    report = retrieve(pacs, local, tmp_path, study.study_uid, study.ct_series_uid,
                      method=method, attempts=2)
    assert report.received == 0 and len(report.missing) == 3
    # every delivery was refused (Orthanc's C-MOVE stops at the first refusal) and retried once
    assert report.attempts == 2 and report.failed >= 2 and len(report.errors) == 2
    assert _staged(tmp_path) == [] and not list(tmp_path.rglob(TEMP_GLOB))
    (tmp_path / study.study_uid).unlink()
    again = retrieve(pacs, local, tmp_path, study.study_uid, study.ct_series_uid, method=method)
    assert again.complete and again.received == 3
    _assert_identical(tmp_path, study.ct_files)


def test_caller_not_on_allowlist_is_rejected(local, corpus, tmp_path) -> None:
    ours = LocalAE(OUR_AET, free_port(), allowed_callers=("ORTHANC",))
    me = PacsSettings("SAM2CT", "127.0.0.1", ours.store_port, backoff=QUICK)
    with StorageSCP(ours, tmp_path) as scp:
        with pytest.raises(AssociationRejectedError, match="Calling AE title not recognised"):
            store_files(me, LocalAE("INTRUDER", free_port()), list(corpus.a.ct_files))
        echo(me, LocalAE("ORTHANC", free_port()))  # an allowed caller gets in
        assert scp.writer.counts.total() == 0
    assert _staged(tmp_path) == []
    with pytest.raises(ValueError, match="allowed_callers"):
        StorageSCP(LocalAE(OUR_AET, free_port()), tmp_path)


def test_storage_scp_receives_and_validates(local, corpus, tmp_path) -> None:
    """C-STORE into our SCP: each staged file is the sent one, and dciodvfy finds nothing new."""
    ours = LocalAE(OUR_AET, free_port(), allowed_callers=("SENDER",))
    me = PacsSettings("SAM2CT", "127.0.0.1", ours.store_port, backoff=QUICK)
    with StorageSCP(ours, tmp_path) as scp:
        report = store_files(me, LocalAE("SENDER", free_port()), list(corpus.a.files))
        assert report.ok and report.stored == len(corpus.a.files)
        assert scp.writer.counts[StoreOutcome.STORED] == len(corpus.a.files)
    _assert_identical(tmp_path, corpus.a.files)
    for sent in corpus.a.files:  # LUNG1 itself has dciodvfy findings: we must add none
        staged = staged_path(tmp_path, corpus.a.study_uid, payload(sent).SeriesInstanceUID,
                             payload(sent).SOPInstanceUID)
        assert dciodvfy_errors(staged) == dciodvfy_errors(sent)


class _BusyPeer:
    """A real pynetdicom C-FIND SCP that answers "out of resources" ``busy`` times, then one match;
    it also records how many associations were open at once."""

    def __init__(self, busy: int) -> None:
        self.busy, self.open, self.peak, self.lock = busy, 0, 0, threading.Lock()
        self.port = free_port()
        ae = AE(ae_title="BUSY")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_ECHO, self.on_echo),
                    (evt.EVT_ESTABLISHED, self.on_open), (evt.EVT_RELEASED, self.on_close),
                    (evt.EVT_ABORTED, self.on_close)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers)

    def on_open(self, event) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def on_close(self, event) -> None:
        with self.lock:
            self.open -= 1

    def on_echo(self, event) -> int:
        time.sleep(0.1)
        return 0x0000

    def on_find(self, event):
        if self.busy > 0:
            self.busy -= 1
            yield 0xA700, None
            return
        match = Dataset()
        match.QueryRetrieveLevel, match.StudyInstanceUID = "STUDY", "1.2.3"
        yield 0xFF00, match


def test_busy_pacs_is_retried_with_backoff(local) -> None:
    peer = _BusyPeer(busy=2)
    try:
        pacs = PacsSettings("BUSY", "127.0.0.1", peer.port,
                            backoff=Backoff(attempts=3, base=0.05, jitter=0.0), max_rate=100.0)
        result = find(pacs, local, QueryLevel.STUDY, {"StudyInstanceUID": "1.2.3"})
        assert result.complete and [m.StudyInstanceUID for m in result.matches] == ["1.2.3"]
        assert peer.busy == 0
    finally:
        peer.server.shutdown()


def test_concurrency_cap_holds_at_the_peer(local) -> None:
    peer = _BusyPeer(busy=0)
    try:
        pacs = PacsSettings("BUSY", "127.0.0.1", peer.port, max_associations=2, max_rate=100.0)
        threads = [threading.Thread(target=echo, args=(pacs, local)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert peer.peak == 2  # measured by the peer, not by us
    finally:
        peer.server.shutdown()



def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_association(local, tmp_path) -> None:
    """Echo over TLS to a real pynetdicom SCP: works with the right CA, refused without it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))
    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx)
    try:
        good = PacsSettings("TLSPACS", "127.0.0.1", port, backoff=QUICK,
                            tls=TlsOptions(ca_file=cert, server_hostname="localhost"))
        echo(good, local)
        untrusted = PacsSettings("TLSPACS", "127.0.0.1", port, backoff=QUICK, tls=TlsOptions())
        with pytest.raises(PacsUnavailableError, match="TLS handshake failed"):
            echo(untrusted, local)
        with pytest.raises(PacsError):  # plain DICOM to a TLS port does not get through
            echo(PacsSettings("TLSPACS", "127.0.0.1", port, backoff=QUICK,
                              timeouts=Timeouts(acse=scaled(2.0), network=scaled(2.0))), local)
    finally:
        server.shutdown()


def test_success_but_nothing_arrived_is_a_failure(local, tmp_path) -> None:
    """A (real pynetdicom) PACS answers every C-MOVE with success and sends nothing."""
    ae = AE(ae_title="LIAR")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    port = free_port()

    def on_move(event):
        yield "127.0.0.1", local.store_port
        yield 0  # no sub-operations, then a final "success"

    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_MOVE, on_move)])
    try:
        pacs = PacsSettings("LIAR", "127.0.0.1", port, backoff=QUICK, max_rate=100.0)
        expected = [_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")]
        report = retrieve(pacs, local, tmp_path, "1.2.3", "1.2.3.4", expected=expected,
                          method="move", attempts=2)
    finally:
        server.shutdown()
    assert not report.complete and report.received == 0 and report.attempts == 2
    assert report.missing == ("1.2.3.4.5",)
    assert "reported success but none of the 1 requested instances arrived" in report.errors[0]
    with pytest.raises(RetrievalIncompleteError):
        report.raise_if_incomplete()
