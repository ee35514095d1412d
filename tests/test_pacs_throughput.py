"""The throughput measures of the receive path keep their correctness: pynetdicom's per-message
logging handlers are dropped (kept at DEBUG), the cached series folders still work when a folder
disappears between deliveries, and our directly encoded File Meta is pydicom's byte for byte.
Real C-STOREs over loopback, no PACS needed.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from pathlib import Path

import pytest
from conftest import free_port
from pacs_peers import OUR_AET, make_study, payload
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1
from pynetdicom import evt
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import Verification

from dicom_io.files import TEMP_GLOB
from dicom_io.pacs import LocalAE, PacsSettings, StorageSCP, StoreOutcome, staged_path, store_files
from dicom_io.pacs.association import build_context, open_association
from dicom_io.pacs.settings import Backoff
from dicom_io.pacs.storage import file_meta_bytes

pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local
QUICK = Backoff(attempts=2, base=0.05, jitter=0.0)


def _scp_and_sender(tmp_path: Path) -> tuple[LocalAE, PacsSettings, LocalAE]:
    ours = LocalAE(OUR_AET, free_port(), allowed_callers=("SENDER",))
    return ours, PacsSettings("SAM2CT", "127.0.0.1", ours.store_port, backoff=QUICK), LocalAE(
        "SENDER", free_port())


def _dimse_log_handlers(scp: StorageSCP) -> list[list[str]]:
    """Wrap the SCP's C-STORE handler to record the DIMSE-RECV handlers bound at that moment."""
    seen: list[list[str]] = []
    store = scp.writer.handle_store

    def spy(event: evt.Event) -> int:
        seen.append([h.__name__ for h, _ in event.assoc.get_handlers(evt.EVT_DIMSE_RECV)])
        return store(event)

    scp.writer.handle_store = spy  # bound by start(), so wrap before it
    return seen


def test_standard_log_handlers_dropped_unless_debug(corpus, tmp_path: Path) -> None:
    files = list(corpus.a.ct_files[:2])
    for level, expect_kept in ((logging.WARNING, False), (logging.DEBUG, True)):
        logger = logging.getLogger("pynetdicom")
        old = logger.level
        logger.setLevel(level)
        try:
            ours, me, sender = _scp_and_sender(tmp_path)
            scp = StorageSCP(ours, tmp_path / logging.getLevelName(level))
            seen = _dimse_log_handlers(scp)
            with scp:
                report = store_files(me, sender, files)
        finally:
            logger.setLevel(old)
        assert report.ok and report.stored == len(files)
        assert len(seen) == len(files)
        kept = ["standard_dimse_recv_handler" in names for names in seen]
        assert kept == [expect_kept] * len(files), (level, seen)


def test_series_folder_removed_between_deliveries(corpus, tmp_path: Path) -> None:
    """The writer remembers folders it made; one removed behind its back is made again."""
    study = corpus.a
    ours, me, sender = _scp_and_sender(tmp_path)
    staging = tmp_path / "staging"
    first, second = study.ct_files[0], study.ct_files[1]
    with StorageSCP(ours, staging) as scp:
        assert store_files(me, sender, [first]).stored == 1
        folder = staged_path(staging, study.study_uid, study.ct_series_uid, "1").parent
        shutil.rmtree(folder)
        assert store_files(me, sender, [second]).stored == 1
        assert scp.writer.counts[StoreOutcome.STORED] == 2
    staged = staged_path(staging, study.study_uid, study.ct_series_uid,
                         payload(second).SOPInstanceUID)
    assert payload(staged.read_bytes()) == payload(second)
    assert not list(folder.glob(TEMP_GLOB))


def test_two_series_in_parallel_stores(corpus, tmp_path: Path) -> None:
    """Two senders at once into one SCP (as parallel C-MOVEs would): every file, bit-identical."""
    src = tmp_path / "src"
    studies = [make_study(src, list(corpus.a.ct_files), "20260105", []) for _ in range(2)]
    ours, me, _ = _scp_and_sender(tmp_path)
    staging = tmp_path / "staging"
    reports = []
    with StorageSCP(ours, staging) as scp:
        threads = [threading.Thread(target=lambda s=s: reports.append(
            store_files(me, LocalAE("SENDER", free_port()), list(s.ct_files)))) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert scp.writer.counts[StoreOutcome.STORED] == sum(len(s.ct_files) for s in studies)
    assert all(r.ok for r in reports) and len(reports) == 2
    for s in studies:
        for f in s.ct_files:
            p = payload(f)
            staged = staged_path(staging, s.study_uid, s.ct_series_uid, p.SOPInstanceUID)
            assert payload(staged.read_bytes()) == p


def test_file_meta_is_pydicoms_byte_for_byte() -> None:
    """Odd and even UID lengths, each padding path, several transfer syntaxes."""
    for sop_class, sop, syntax in (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian),
                                   ("1.2.840.10008.5.1.4.1.1.11.1", "1.2.3.45", JPEGLosslessSV1),
                                   ("1.2.840.10008.5.1.4.1.1.66.4", "9" * 64,
                                    ImplicitVRLittleEndian)):
        meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop,
                                transfer_syntax=syntax)
        assert file_meta_bytes(sop_class, sop, syntax) == (
            b"\x00" * 128 + b"DICM" + encode_file_meta(meta))


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_our_sockets_ack_at_once_after_each_pdu_they_send(corpus, tmp_path: Path) -> None:
    """Both ends of ours leave each sent PDU with the socket in quick-ACK mode, so a peer that
    writes with Nagle's algorithm on (Orthanc as shipped) need not wait ~40 ms for our delayed
    ACK before each dataset: read on the SCP's socket as each C-STORE arrives, and on our
    requestor's after a C-ECHO."""
    def quick(sock: socket.socket) -> int:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)

    ours, me, sender = _scp_and_sender(tmp_path)
    scp = StorageSCP(ours, tmp_path / "staging")
    seen: list[int] = []
    store = scp.writer.handle_store

    def spy(event: evt.Event) -> int:
        seen.append(quick(event.assoc.dul.socket.socket))
        return store(event)

    scp.writer.handle_store = spy  # bound by start(), so wrap before it
    with scp:
        assert store_files(me, sender, list(corpus.a.files)).ok
        with open_association(me, sender, [build_context(Verification)]) as assoc:
            assert assoc.send_c_echo().Status == 0x0000
            requestor = quick(assoc.dul.socket.socket)
    assert len(seen) >= 3 and set(seen[1:]) == {1}  # the first comes on a fresh socket
    assert requestor == 1
