"""Attacks measured against our storage SCP, each reproduced over real sockets against the real
SCP, with legitimate C-STOREs (pynetdicom, from an allowed AE title) counted while it runs:

- idle or stalled connections from one host (127.0.0.2) must not block another host (127.0.0.1);
- a deflated data set is refused at negotiation, never inflated;
- a wrong called AE title is rejected;
- a second C-STORE of a SOP Instance UID with other content is kept apart and reported;
- the SCP listens on the address the PACS reaches, not every interface.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time

import pydicom
import pytest
from conftest import free_port
from pacs_peers import OUR_AET, make_tls_files, payload, scaled
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_io.pacs import LocalAE, PacsUnavailableError, StorageSCP, StoreOutcome, TlsOptions
from dicom_io.pacs.storage import QUARANTINE, listen_address, staged_path

pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus
SENDER = "SENDER"
ATTACKER_HOST = "127.0.0.2"  # Linux routes all of 127/8 to loopback: a second host for the SCP
LEGIT = 15


def _local(**options) -> LocalAE:
    return LocalAE(OUR_AET, free_port(), allowed_callers=(SENDER,), bind_address="127.0.0.1",
                   **options)


def _sender(syntaxes: list[str] | None = None) -> AE:
    ae = AE(ae_title=SENDER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = scaled(10.0)
    ae.add_requested_context(CTImageStorage, syntaxes or [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    return ae


def _store(local: LocalAE, ds: pydicom.Dataset, called: str = OUR_AET, **assoc_options):
    """One association from 127.0.0.1 and one C-STORE: its status, or None when no
    association was made."""
    assoc = _sender(**assoc_options).associate("127.0.0.1", local.store_port, ae_title=called,
                                               bind_address=("127.0.0.1", 0))
    if not assoc.is_established:
        return None
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _wait_for(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ct(corpus, n: int = 0) -> pydicom.Dataset:
    return pydicom.dcmread(corpus.a.ct_files[n])


# --- idle and stalled connections ---------------------------------------------------------------


class _Flood:
    """``count`` connections from ``ATTACKER_HOST`` kept open: each one the SCP closes is opened
    again at once. ``header`` sends the 6-byte header of an A-ASSOCIATE-RQ and then stalls."""

    def __init__(self, port: int, count: int, header: bool) -> None:
        self.port, self.count, self.header = port, count, header
        self.lifetimes: list[float] = []  # seconds each closed connection stayed open
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _open(self) -> tuple[socket.socket, float]:
        sock = socket.socket()
        sock.bind((ATTACKER_HOST, 0))
        sock.connect(("127.0.0.1", self.port))
        if self.header:  # type 1 (A-ASSOCIATE-RQ), 64 KB announced, never sent
            sock.sendall(struct.pack(">BBL", 1, 0, 65536))
        self.opened += 1
        return sock, time.monotonic()

    def _run(self) -> None:
        open_ = dict(self._open() for _ in range(self.count))
        while not self._stop.is_set():
            readable, _, _ = select.select(list(open_), [], [], 0.05)
            for sock in readable:  # the SCP closed it: note how long it lived, renew it
                try:
                    closed = sock.recv(1) == b""
                except OSError:
                    closed = True
                if closed:
                    self.lifetimes.append(time.monotonic() - open_.pop(sock))
                    sock.close()
                    new, born = self._open()
                    open_[new] = born
            if readable:
                time.sleep(0.02)  # renewed at once, but without taking a core of the machine
        for sock in open_:
            sock.close()


@pytest.mark.parametrize("header", [False, True], ids=["silent", "stalled-header"])
def test_idle_connections_from_one_host_do_not_block_another(corpus, tmp_path,
                                                             header: bool) -> None:
    """17 idle connections renewed as soon as closed (the attack held all 16 slots); meanwhile
    15 associations from another host, spread over more than one ACSE timeout, all store.
    The ACSE timeout is stretched on a loaded machine: a legitimate sender must be able to
    make its association within it."""
    local = _local(acse_timeout=scaled(1.5))
    ds = _ct(corpus)
    with StorageSCP(local, tmp_path) as scp, _Flood(local.store_port, 17, header) as flood:
        _wait_for(lambda: len(flood.lifetimes) >= 17 - local.max_associations_per_peer,
                  what="the SCP to refuse the connections over the per-peer cap")
        statuses = []
        for _ in range(LEGIT):
            status = _store(local, ds)
            statuses.append(status.Status if status is not None else None)
            time.sleep(local.acse_timeout / 7.5)  # 15 x: two ACSE timeouts of flood renewals
        _wait_for(lambda: any(t >= local.acse_timeout for t in flood.lifetimes),
                  what="an idle connection closed by the ACSE timeout")
    succeeded = statuses.count(0x0000)
    print(f"\n{'stalled' if header else 'silent'} flood: {succeeded}/{LEGIT} legitimate "
          f"associations stored; {flood.opened} attacker connections opened")
    assert succeeded == LEGIT, statuses
    assert scp.writer.counts[StoreOutcome.STORED] == 1
    refused = [t for t in flood.lifetimes if t < local.acse_timeout / 2]
    assert len(refused) >= 17 - local.max_associations_per_peer  # the per-peer cap
    # none outlived the ACSE deadline by much (a stalled header blocks pynetdicom's own reader)
    assert max(flood.lifetimes) < local.acse_timeout + scaled(5.0)


def test_silent_client_does_not_stall_tls_accepts(corpus, tmp_path) -> None:
    """With TLS the handshake happens on the connection's own thread: before, a client that
    never sent its ClientHello stopped every accept of the SCP."""
    tls = make_tls_files(tmp_path / "tls")
    local = _local(acse_timeout=scaled(2.0), tls=TlsOptions(ca_file=tls.ca, cert_file=tls.client_cert,
                                                    key_file=tls.client_key))
    client = ssl.create_default_context(cafile=str(tls.ca))
    client.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    with StorageSCP(local, tmp_path / "staging"), socket.socket() as silent:
        silent.bind((ATTACKER_HOST, 0))
        silent.connect(("127.0.0.1", local.store_port))
        assoc = _sender().associate("127.0.0.1", local.store_port, ae_title=OUR_AET,
                                    tls_args=(client, "localhost"))
        assert assoc.is_established
        status = assoc.send_c_store(_ct(corpus))
        assoc.release()
        assert status.Status == 0x0000
        silent.settimeout(local.acse_timeout + scaled(5.0))
        assert silent.recv(1) == b""  # and the silent one is closed after the ACSE timeout


# --- deflate, called AE title -------------------------------------------------------------------


def test_deflated_data_set_is_refused(corpus, tmp_path) -> None:
    """An allowed caller offering only Deflated Explicit VR Little Endian gets no context to
    send on (the attack inflated 778 KB into 1.6 GB); offering both, it is given Explicit VR."""
    local = _local()
    ds = _ct(corpus)
    with StorageSCP(local, tmp_path) as scp:
        assoc = _sender([DeflatedExplicitVRLittleEndian]).associate(
            "127.0.0.1", local.store_port, ae_title=OUR_AET)
        assert assoc.is_established  # Verification is still accepted
        assert [cx.transfer_syntax for cx in assoc.accepted_contexts
                if cx.abstract_syntax == CTImageStorage] == []
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ds)
        assoc.release()
        both = [DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]
        statuses = [_store(local, ds, syntaxes=both).Status for _ in range(LEGIT)]
        assert scp.writer.counts[StoreOutcome.STORED] == 1
    print(f"\ndeflate: {statuses.count(0x0000)}/{LEGIT} legitimate associations stored")
    assert statuses == [0x0000] * LEGIT
    staged = staged_path(tmp_path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(staged).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_wrong_called_ae_title_is_rejected(corpus, tmp_path) -> None:
    local = _local()
    ds = _ct(corpus)
    with StorageSCP(local, tmp_path) as scp:
        assoc = _sender().associate("127.0.0.1", local.store_port, ae_title="NOT_US")
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
        statuses = [_store(local, ds).Status for _ in range(LEGIT)]
        assert scp.writer.counts.total() == LEGIT  # none from the rejected association
    print(f"\ncalled AE title: {statuses.count(0x0000)}/{LEGIT} legitimate associations stored")
    assert statuses == [0x0000] * LEGIT


# --- a SOP Instance UID again, with other content ------------------------------------------------


def test_resend_with_other_content_is_kept_apart_and_reported(corpus, tmp_path, caplog) -> None:
    local = _local()
    first = _ct(corpus)
    other = _ct(corpus)
    other.WindowCenter = -600  # same SOP Instance UID, other content
    staged = staged_path(tmp_path, first.StudyInstanceUID, first.SeriesInstanceUID,
                         first.SOPInstanceUID)
    with StorageSCP(local, tmp_path) as scp, caplog.at_level(logging.WARNING):
        assert _store(local, first).Status == 0x0000
        original = staged.read_bytes()
        assert _store(local, first).Status == 0x0000  # identical re-send: plain success
        status = _store(local, other)
        assert status.Status == 0xB006  # warning: elements discarded (PS3.4 Table B.2-1)
        assert "other content" in status.ErrorComment
        assert _store(local, other).Status == 0xB006  # and again: still one copy kept apart
        counts = scp.writer.counts
    assert (counts[StoreOutcome.STORED], counts[StoreOutcome.DUPLICATE],
            counts[StoreOutcome.CONFLICT]) == (1, 1, 2)
    assert staged.read_bytes() == original  # the first stays
    kept = list((tmp_path / QUARANTINE).rglob("*.dcm"))
    assert len(kept) == 1 and kept[0].name.startswith(first.SOPInstanceUID)
    assert payload(kept[0]).WindowCenter == -600 and payload(staged).WindowCenter != -600
    assert list(tmp_path.glob(f"*/*/{first.SOPInstanceUID}*")) == [staged]  # none beside it
    assert any(first.SOPInstanceUID in r.getMessage() and "other content" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


# --- where the SCP listens -----------------------------------------------------------------------


def _address_beside_loopback() -> str | None:
    """A local address that is not loopback (the route to a documentation address), if any."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 104))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_listens_on_the_route_to_the_pacs_not_every_interface(tmp_path) -> None:
    local = LocalAE(OUR_AET, free_port(), allowed_callers=(SENDER,))
    assert listen_address(local) == "127.0.0.1"
    assert listen_address(local, "127.0.0.1") == "127.0.0.1"
    assert listen_address(LocalAE(OUR_AET, 1, bind_address="0.0.0.0"), "127.0.0.1") == "0.0.0.0"
    with pytest.raises(PacsUnavailableError, match="no-such-host.invalid.*SAM2CT_BIND_ADDRESS"):
        listen_address(local, "no-such-host.invalid")
    with pytest.raises(ValueError, match="'bind_address' value 'pacs.example.org'"):
        LocalAE(OUR_AET, 1, bind_address="pacs.example.org")
    other = _address_beside_loopback()
    with StorageSCP(local, tmp_path, pacs_host="127.0.0.1") as scp:
        assert scp.address == "127.0.0.1"
        assoc = _sender().associate("127.0.0.1", local.store_port, ae_title=OUR_AET)
        assert assoc.is_established
        assoc.release()
        if other is None:
            pytest.skip("this machine has no address beside loopback to check")
        with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
            probe.connect((other, local.store_port))
    assert listen_address(local, other) == other
