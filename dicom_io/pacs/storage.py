"""Our embedded storage SCP and the staging area it writes to.

Files land in ``staging/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, written to a
temporary name in the same folder and renamed, so a file that exists is complete. An identical
re-send is acknowledged and ignored; one with other content never replaces the first: it is kept
apart under ``staging/quarantine/`` and reported (:data:`StoreOutcome.CONFLICT`). A write error
becomes a DIMSE failure status, never a dead server.

Guards against callers that are not our PACS (:class:`StorageSCP`): we listen on one address (the
route to the PACS unless configured), check the called and calling AE titles, refuse deflated
transfer syntaxes, cap the connections of one remote address and close a connection that has not
made an association within ``LocalAE.acse_timeout``.

Throughput (measured with ``bench/bench_pacs_retrieve.py``, CPU per 0.5 MB instance): one C-GET
association costs ~4.5-5 ms in our process (DCMTK's getscu ~1.3 ms), of which our handler ~1.3 ms
(thread CPU: three UIDs read with ``specific_tags`` ~0.25 ms, one write, one rename, one mkdir per
series) and pynetdicom the rest (decoding the DIMSE command set ~1 ms and building the C-STORE
response ~1.2 ms, both through pydicom; PDUs read in 4 KB ``recv`` calls; reactor threads polling
every 1 ms). The File Meta is encoded here directly (:func:`file_meta_bytes`, byte for byte what
pydicom writes for pynetdicom's ``event.file_meta``): that general path took ~0.55 ms of CPU for
six elements, and the handler ~2.2 ms in all. We drop pynetdicom's per-message logging handlers on
our associations (they copy each dataset whatever the log level). We leave
``_config.STORE_RECV_CHUNKED_DATASET`` off: it is process-wide, it writes to the system temp folder
(maybe not the staging file system, so no atomic rename), and it measured no faster here.

Example
-------
>>> with StorageSCP(local, staging) as scp:  # doctest: +SKIP
...     ...  # C-MOVE to local.ae_title; scp.writer.stored counts what arrived
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_io.files import write_atomic
from dicom_io.pacs.association import ack_at_once, drop_log_handlers_on_establish
from dicom_io.pacs.errors import PacsUnavailableError, StoragePortError
from dicom_io.pacs.settings import LocalAE

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
#: PS3.4 Table B.2-1 "Warning: Elements Discarded": the nearest of the C-STORE statuses to "your
#: content was not taken (kept apart)" for a re-send with other content; a failure status would
#: make some PACS (Orthanc >= 1.6) abort the rest of the C-MOVE although the instance was received
STATUS_ELEMENTS_DISCARDED = 0xB006
#: the folder under the staging area where re-sends with other content are kept apart
QUARANTINE = "quarantine"


class StoreOutcome(StrEnum):
    """What happened to one received instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same bytes as the instance already staged: nothing to do
    CONFLICT = "conflict"  # the UID of a staged instance with other content: kept apart
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    """One C-STORE received: which instance, what we did with it and where it is."""

    sop_instance_uid: str
    outcome: StoreOutcome
    path: Path | None
    reason: str = ""


def staged_path(staging: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Where an instance lives in the staging area; raises ``ValueError`` for an unsafe UID."""
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                      ("SOPInstanceUID", sop_uid)):
        if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
            raise ValueError(f"Invalid '{name}' value '{uid}' - not a DICOM UID")
    return staging / study_uid / series_uid / f"{sop_uid}.dcm"


_PREAMBLE = b"\x00" * 128 + b"DICM"


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) for a received dataset.

    The same bytes as pydicom writing pynetdicom's ``event.file_meta`` (a test checks it), encoded
    directly because that general path costs ~0.55 ms of CPU per instance for six elements.
    """
    elements = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _even(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _even(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _even(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _even(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return _PREAMBLE + length + elements


def _even(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-2 element in Explicit VR Little Endian (OB has the long length form)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


class Tally:
    """Counts deliveries of a watched set of SOP Instance UIDs (one retrieval's view)."""

    def __init__(self, expected: Iterable[str]) -> None:
        self.expected = frozenset(expected)
        self.outcomes: Counter[StoreOutcome] = Counter()
        self.seen: Counter[str] = Counter()
        self.failures: dict[str, str] = {}

    def record(self, delivery: Delivery) -> None:
        """Count one delivery of an instance in ``expected``."""
        self.outcomes[delivery.outcome] += 1
        self.seen[delivery.sop_instance_uid] += 1
        if delivery.outcome is StoreOutcome.FAILED:
            self.failures[delivery.sop_instance_uid] = delivery.reason


class StagingWriter:
    """The C-STORE handler: writes each instance into the staging area, thread-safe.

    ``on_delivery`` (optional) is called after every instance, e.g. to advance a progress bar.
    """

    def __init__(self, staging: Path,
                 on_delivery: Callable[[Delivery], None] | None = None) -> None:
        self.staging = Path(staging)
        self.on_delivery = on_delivery
        self._lock = threading.Lock()
        self._tallies: list[Tally] = []
        self._folders: set[Path] = set()  # series folders known to exist: one mkdir per series
        #: one lock per stripe of SOP Instance UIDs: a check-then-write of one UID is not raced
        #: by another association of this process (C-GET workers in other processes are not
        #: covered)
        self._uid_locks = tuple(threading.Lock() for _ in range(64))
        self.counts: Counter[StoreOutcome] = Counter()

    @contextmanager
    def watch(self, expected: Iterable[str]) -> Iterator[Tally]:
        """Count deliveries of ``expected`` UIDs while the block runs."""
        tally = Tally(expected)
        with self._lock:
            self._tallies.append(tally)
        try:
            yield tally
        finally:
            with self._lock:
                self._tallies.remove(tally)

    def handle_store(self, event: evt.Event) -> int | Dataset:
        """``evt.EVT_C_STORE`` handler: store the instance, return a DIMSE status."""
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            delivery = self._store(event, sop_uid)
        except Exception as exc:  # an SCP handler must answer, not die (pynetdicom's advice)
            logger.error("C-STORE of an instance from %s failed: %s",
                         event.assoc.requestor.ae_title, exc)
            delivery = Delivery(sop_uid, StoreOutcome.FAILED, None, str(exc))
        self.record(delivery)
        return _status(delivery)

    def _store(self, event: evt.Event, sop_uid: str) -> Delivery:
        ds = _leading_elements(event)
        if str(ds.get("SOPInstanceUID", "")) != sop_uid:
            raise ValueError("dataset SOPInstanceUID differs from the C-STORE request's")
        path = staged_path(self.staging, str(ds.get("StudyInstanceUID", "")),
                           str(ds.get("SeriesInstanceUID", "")), sop_uid)
        meta = file_meta_bytes(str(event.request.AffectedSOPClassUID),
                               sop_uid, str(event.context.transfer_syntax))
        data = event.encoded_dataset(include_meta=False)  # the received bytes, no copy
        try:
            with self._uid_locks[hash(sop_uid) % len(self._uid_locks)]:
                if path.exists():
                    return self._again(path, meta, data)
                self._write(path, meta, data)
        except OSError as e:
            return Delivery(sop_uid, StoreOutcome.FAILED, None,
                            f"write error in staging: {e.strerror or e}")
        return Delivery(sop_uid, StoreOutcome.STORED, path)

    def _again(self, path: Path, meta: bytes, data: bytes) -> Delivery:
        """A delivery of a staged instance: a duplicate when its bytes (File Meta, so transfer
        syntax, and dataset) are those staged, else kept apart under ``quarantine/``, one file
        per distinct content, and reported."""
        sop_uid = path.stem
        if _same_content(path, meta, data):
            return Delivery(sop_uid, StoreOutcome.DUPLICATE, path)
        digest = hashlib.sha256(meta)
        digest.update(data)
        kept = (self.staging / QUARANTINE / path.relative_to(self.staging).parent
                / f"{sop_uid}.{digest.hexdigest()[:16]}.dcm")
        if not kept.exists():
            write_atomic(kept, meta, data)
        logger.warning("SOP Instance %s arrived again with other content than the staged one: "
                       "kept apart in %s, the staged one unchanged", sop_uid, kept)
        return Delivery(sop_uid, StoreOutcome.CONFLICT, kept,
                        "already staged with other content: kept apart")

    def _write(self, path: Path, *chunks: bytes) -> None:
        folder = path.parent
        if folder in self._folders:
            try:
                return write_atomic(path, *chunks, make_parents=False)
            except FileNotFoundError:  # the folder was removed behind our back: make it again
                self._folders.discard(folder)
        write_atomic(path, *chunks)
        self._folders.add(folder)

    def record(self, delivery: Delivery) -> None:
        """Count one delivery: ours, or one a worker process made into the same staging area."""
        with self._lock:
            self.counts[delivery.outcome] += 1
            for tally in self._tallies:
                if delivery.sop_instance_uid in tally.expected:
                    tally.record(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)


def _status(delivery: Delivery) -> int | Dataset:
    """The C-STORE response status for one delivery (PS3.4 Table B.2-1)."""
    if delivery.outcome in (StoreOutcome.STORED, StoreOutcome.DUPLICATE):
        return STATUS_SUCCESS
    if delivery.outcome is StoreOutcome.CONFLICT:
        status = Dataset()
        status.Status = STATUS_ELEMENTS_DISCARDED
        status.ErrorComment = "SOP Instance UID already received with other content"
        return status
    return STATUS_OUT_OF_RESOURCES if delivery.reason.startswith("write") else (
        STATUS_CANNOT_UNDERSTAND)


def _same_content(path: Path, meta: bytes, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``meta`` followed by ``data``."""
    if path.stat().st_size != len(meta) + len(data):
        return False
    staged = path.read_bytes()
    return staged[:len(meta)] == meta and memoryview(staged)[len(meta):] == data


_LAST_NEEDED = Tag("SeriesInstanceUID")
_NEEDED = [Tag("SOPInstanceUID"), Tag("StudyInstanceUID"), Tag("SeriesInstanceUID")]


def _leading_elements(event: evt.Event) -> Dataset:
    """Only the three UIDs of the path, read from the elements up to SeriesInstanceUID: far
    cheaper than decoding the whole dataset (``event.dataset``) on every C-STORE."""
    ts = UID(event.context.transfer_syntax)
    raw = event.request.DataSet
    if not hasattr(raw, "seek"):  # deflated syntaxes are refused (storage_contexts_for_scp)
        return event.dataset
    raw.seek(0)
    try:
        return read_dataset(raw, ts.is_implicit_VR, ts.is_little_endian,
                            stop_when=lambda tag, vr, length: tag > _LAST_NEEDED,
                            specific_tags=_NEEDED)
    finally:
        raw.seek(0)


#: Transfer syntaxes no CT or presentation state comes in: video and audio (MPEG-2, H.264,
#: HEVC, SMPTE ST 2110) and JPIP referenced (the pixels stay on a server of the sender's).
_NOT_FOR_IMAGES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.7.", "1.2.840.10008.1.2.4.94",
                   "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.204",
                   "1.2.840.10008.1.2.4.205")
#: Deflated syntaxes (Explicit VR Little Endian; image frames): refused rather than inflated
#: under a cap. Inflating is where the amplification is (778 KB on the wire became 1.6 GB to read
#: three UIDs), no sender of CT needs them (Explicit and Implicit VR Little Endian are always
#: offered beside), and a refusal leaves no inflated file for the segmenter to read later.
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


@functools.cache
def storage_contexts_for_scp() -> tuple:
    """Presentation contexts our SCP accepts: every storage class, in any transfer syntax an
    image can come in (uncompressed, every JPEG family, RLE) except deflated ones.

    Explicit VR Little Endian is preferred and Implicit VR last, so private elements keep their VR
    when the sender offers both. Video, audio and JPIP syntaxes are left out: pynetdicom copies
    every accepted context for each association it accepts (one per C-MOVE), and 170 classes
    times all 45 syntaxes took ~0.1 s of CPU each time. Deflated ones are refused (``_DEFLATED``).
    """
    rest = [ts for ts in ALL_TRANSFER_SYNTAXES
            if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            and not ts.startswith(_NOT_FOR_IMAGES) and ts not in _DEFLATED]
    syntaxes = [ExplicitVRLittleEndian, *rest, ImplicitVRLittleEndian]
    return tuple(build_context(cx.abstract_syntax, syntaxes)
                 for cx in AllStoragePresentationContexts)


def listen_address(local: LocalAE, pacs_host: str | None = None) -> str:
    """The IP address our storage SCP listens on.

    Parameters
    ----------
    local
        Its ``bind_address``, when set, is the answer (``"0.0.0.0"`` for every interface).
    pacs_host
        The PACS that will call us: without ``bind_address`` we listen on the local address of
        the route to it (loopback for a PACS on loopback); ``None`` means loopback.

    Raises
    ------
    PacsUnavailableError
        ``pacs_host`` does not resolve or no route leads to it.
    """
    if local.bind_address is not None:
        return local.bind_address
    if pacs_host is None:
        return "127.0.0.1"
    try:  # connecting a UDP socket picks the route and sends nothing
        infos = socket.getaddrinfo(pacs_host, 104, type=socket.SOCK_DGRAM)
        family, _, _, _, address = min(infos, key=lambda i: i[0] != socket.AF_INET)
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError as e:
        raise PacsUnavailableError(
            f"PACS host {pacs_host}: no route from this machine ({e.strerror or e}); set the "
            "address our storage SCP listens on (SAM2CT_BIND_ADDRESS)") from e


class _GuardedHandler(RequestHandler):
    """pynetdicom's handler, with a deadline: a connection that has not sent the header of an
    A-ASSOCIATE-RQ (or finished its TLS handshake), or made an association, within
    ``acse_timeout`` seconds of its accept is closed. The handler's thread lives as long as
    the connection, so the server can count a peer's connections (``finish`` releases one)."""

    server: _GuardedServer

    def handle(self) -> None:
        deadline = time.monotonic() + self.server.acse_timeout
        if not self._opening(deadline):
            self._shutdown()
            self.request.close()
            return
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join(max(0.0, deadline - time.monotonic()))
        if assoc.is_alive() and not (assoc.is_established or assoc.is_released
                                     or assoc.is_aborted or assoc.is_rejected):
            logger.info("storage SCP: closed a connection from %s: no association within "
                        "%g s", self.client_address[0], self.server.acse_timeout)
            self._shutdown()  # wakes pynetdicom's reader, which then ends and closes it
        assoc.join()

    def _opening(self, deadline: float) -> bool:
        """Wait (until ``deadline``) for the TLS handshake or for the 6-byte header of an
        A-ASSOCIATE-RQ PDU, peeked: pynetdicom reads it again. False when it did not come."""
        sock = self.request
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            if self.server.ssl_context is not None:
                sock.do_handshake()
                return True
            head = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
            return len(head) == 6 and head[0] == 0x01  # A-ASSOCIATE-RQ
        except OSError:  # timed out, reset, or a failed handshake
            return False
        finally:
            sock.settimeout(None)  # as pynetdicom has it: select, then blocking reads

    def _shutdown(self) -> None:
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def finish(self) -> None:
        self.server.release(self.client_address[0])


class _GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server that refuses a connection, at accept, when its
    remote address already holds ``per_peer`` connections, and defers a TLS handshake to the
    connection's own thread (in the accepting thread one silent client stopped every accept)."""

    daemon_threads = True  # handler threads live as long as their associations:
    block_on_close = False  # stopping the server does not wait for them (as before)
    #: the kernel's queue of connections not yet accepted (socketserver's 5 overflowed under a
    #: burst, and a connection over it waits a SYN-ACK retry: 1 s, then 2 s...)
    request_queue_size = 128
    acse_timeout = 5.0
    per_peer = 8

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._peers: Counter[str] = Counter()
        self._peers_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: socket.socket, client_address: tuple) -> bool:
        host = client_address[0]
        with self._peers_lock:
            if self._peers[host] >= self.per_peer:
                logger.warning("storage SCP: refused a connection from %s: it holds %d already",
                               host, self._peers[host])
                return False
            self._peers[host] += 1
        return True

    def release(self, host: str) -> None:
        """One connection of ``host`` ended."""
        with self._peers_lock:
            self._peers[host] -= 1
            if self._peers[host] <= 0:
                del self._peers[host]

    def handle_error(self, request: object, client_address: tuple) -> None:
        logger.warning("storage SCP: a connection from %s failed", client_address[0],
                       exc_info=logger.isEnabledFor(logging.DEBUG))


def check_port(local: LocalAE, pacs_host: str | None = None) -> None:
    """Raise :class:`StoragePortError` now when our storage SCP could not listen on its
    address and port (bound once, as its server binds, and let go), rather than when a
    retrieval starts it."""
    host = listen_address(local, pacs_host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom's server
        try:
            probe.bind((host, local.store_port))
        except OSError as e:
            raise _cannot_listen(local, host, e) from e


def _cannot_listen(local: LocalAE, host: str, error: OSError) -> StoragePortError:
    return StoragePortError(f"storage SCP {local.ae_title}: cannot listen on {host} port "
                            f"{local.store_port}: {error.strerror or error}; "
                            f"{_port_hint(error)}")


def _port_hint(error: OSError) -> str:
    """What to do when our storage SCP cannot listen."""
    if error.errno == errno.EADDRINUSE:
        return ("another program (or another sam2ct run) listens there: stop it, or choose a "
                "free port (SAM2CT_STORE_PORT or --store-port) and register it at the PACS")
    if error.errno == errno.EACCES:
        return "ports below 1024 need privileges: choose another (SAM2CT_STORE_PORT)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this host's (SAM2CT_BIND_ADDRESS)"
    return "check SAM2CT_STORE_PORT and SAM2CT_BIND_ADDRESS"


class StorageSCP:
    """Embedded storage SCP for C-MOVE destinations; only ``local.allowed_callers`` may call.

    Use as a context manager, or ``start()``/``stop()``. ``extra_callers`` adds allowed AE titles
    (typically the PACS we retrieve from); ``pacs_host`` is where that PACS is, to listen on the
    address it reaches (:func:`listen_address`) when ``local.bind_address`` is not set.
    Associations must call ``local.ae_title``; see :class:`LocalAE` for the limits.
    """

    def __init__(self, local: LocalAE, staging: Path, *, extra_callers: Iterable[str] = (),
                 on_delivery: Callable[[Delivery], None] | None = None,
                 network_timeout: float = 60.0, dimse_timeout: float = 60.0,
                 pacs_host: str | None = None) -> None:
        self.local = local
        self.writer = StagingWriter(staging, on_delivery)
        self.allowed = sorted({*local.allowed_callers, *extra_callers})
        if not self.allowed:
            raise ValueError("Invalid 'allowed_callers' - empty: the storage SCP would accept no one")
        self.pacs_host = pacs_host
        self._timeouts = (network_timeout, dimse_timeout)
        self._server: _GuardedServer | None = None

    @property
    def address(self) -> str:
        """The IP address the SCP listens on (once started)."""
        if self._server is None:
            raise ValueError("Invalid 'address' - the storage SCP is not started")
        return self._server.server_address[0]

    def start(self) -> StorageSCP:
        """Start listening on ``local.store_port`` (returns self)."""
        ae = AE(ae_title=self.local.ae_title)
        ae.network_timeout, ae.dimse_timeout = self._timeouts
        ae.acse_timeout = self.local.acse_timeout
        ae.require_calling_aet = self.allowed
        ae.require_called_aet = True
        ae.maximum_associations = self.local.max_associations
        ae.maximum_pdu_size = 0  # let the sender use its largest PDUs: fewer, faster reads
        ae.supported_contexts = list(storage_contexts_for_scp())  # built once: ~0.3 s
        ae.add_supported_context(Verification)
        host = listen_address(self.local, self.pacs_host)
        try:
            server = ae.make_server(
                (host, self.local.store_port), server_class=_GuardedServer,
                request_handler=_GuardedHandler,
                ssl_context=self.local.tls.server_context() if self.local.tls else None,
                evt_handlers=[(evt.EVT_C_STORE, self.writer.handle_store),
                              (evt.EVT_ESTABLISHED, drop_log_handlers_on_establish),
                              (evt.EVT_DATA_SENT, ack_at_once)])
        except OSError as e:
            raise _cannot_listen(self.local, host, e) from e
        server.acse_timeout = self.local.acse_timeout
        server.per_peer = self.local.max_associations_per_peer
        ae._servers.append(server)  # as AE.start_server does: the server's shutdown removes it
        threading.Thread(target=server.serve_forever, daemon=True,
                         name=f"storage-scp-{self.local.store_port}").start()
        self._server = server
        logger.info("storage SCP %s listening on %s port %d", self.local.ae_title, host,
                    self.local.store_port)
        return self

    def stop(self) -> None:
        """Stop listening and close open associations: nothing is staged once it returns (a
        PACS slow to finish a C-MOVE would otherwise go on sending on its open association)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # pynetdicom's: stops accepting, leaves associations open
            for assoc in server.active_associations:
                assoc.abort()
                assoc.join(self.local.acse_timeout)

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Delivery", "StagingWriter", "StorageSCP", "StoreOutcome", "Tally", "check_port",
           "file_meta_bytes", "listen_address", "staged_path"]
