"""Real PACS peers for the PACS tests and bench: Orthanc and DCMTK dcmqrscp on free loopback ports.

Each peer runs in its own temp folder with a generated configuration and is stopped (or killed)
by the test. Also builds small test studies from real LUNG1 CT slices and real GSPS files, with
fresh UIDs and chosen study dates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ORTHANC_AET = "ORTHANC"
QRSCP_AET = "QRSCP"


def machine_slowness() -> float:
    """How many times slower than idle this machine runs now: its 1-minute load average per
    core, at least 1. CI machines are not always idle: on 2 cores at load 8, 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1.0, os.getloadavg()[0] / (cores or 1))


def scaled(seconds: float) -> float:
    """``seconds``, a timeout that holds on an idle machine, stretched by
    :func:`machine_slowness` (a timeout a test provokes, not a state it waits for: those are
    polled)."""
    return seconds * machine_slowness()


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"peer did not listen on port {port} within {timeout} s")


@dataclass
class OrthancPeer:
    """Orthanc with our AE as a modality; storage and index in ``folder``."""

    folder: Path
    dicom_port: int
    http_port: int
    our_aet: str
    our_port: int
    limit_find_results: int = 0
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)
    #: log every association (``--verbose``): tests count them in :attr:`log`
    verbose: bool = False

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"

    @property
    def aet(self) -> str:
        return ORTHANC_AET

    @property
    def address(self) -> str:
        return f"{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        return {
            "Name": "sam2ct-test", "DicomAet": ORTHANC_AET, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "Plugins": [],
            "DicomModalities": {"sam2ct": [self.our_aet, "127.0.0.1", self.our_port]},
            "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
            "LimitFindResults": self.limit_find_results, "LimitFindInstances": 0,
            "StorageCompression": False, "DicomScuTimeout": round(scaled(10)),
            "DicomScpTimeout": round(scaled(30)),
            "SynchronousCMove": True, "HttpDescribeErrors": True, "DeidentifyLogs": True,
            "SaveJobs": False, "StableAge": 1, **self.extra,
        }

    def start(self) -> OrthancPeer:
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = self.log
        self.proc = subprocess.Popen(["Orthanc", *(["--verbose"] if self.verbose else []),
                                      str(cfg)], stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        _wait_port(self.http_port, self.proc, log)
        _wait_port(self.dicom_port, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def rest(self, path: str, data: bytes | None = None, method: str | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method=method)
        with urllib.request.urlopen(req, timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if body else None

    def upload(self, paths: list[Path]) -> None:
        for p in paths:
            self.rest("/instances", Path(p).read_bytes(), "POST")


@dataclass
class QrscpPeer:
    """DCMTK dcmqrscp with a generated config: our AE may query, retrieve and store."""

    folder: Path
    port: int
    our_aet: str
    our_port: int
    proc: subprocess.Popen | None = None

    @property
    def aet(self) -> str:
        return QRSCP_AET

    @property
    def address(self) -> str:
        return f"{QRSCP_AET}@127.0.0.1:{self.port}"

    def start(self) -> QrscpPeer:
        db = self.folder / "db"
        db.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "dcmqrscp.cfg"
        cfg.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n\n"
            "HostTable BEGIN\n"
            f"sam2ct = ({self.our_aet}, 127.0.0.1, {self.our_port})\n"
            "HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            "AETable BEGIN\n"
            f"{QRSCP_AET} {db} RW (1000, 1024mb) sam2ct\n"
            "AETable END\n")
        log = self.folder / "dcmqrscp.log"
        exe = shutil.which("dcmqrscp")
        if exe is None:
            raise FileNotFoundError("dcmqrscp (Debian package dcmtk) is not installed")
        self.proc = subprocess.Popen([exe, "-c", str(cfg), "--disable-host-lookup",
                                      str(self.port)], stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        _wait_port(self.port, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# --- test studies -----------------------------------------------------------------------------

GSPS_SOURCES = ("gsps/clearcanvas/real01.pr.dcm", "gsps/clearcanvas/real02.pr.dcm",
                "gsps/agfa-impax/GSPS.dcm", "gsps/clearcanvas/real03.pr.dcm")


_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


@dataclass(frozen=True)
class PeerStudy:
    """One study written by :func:`make_study`: its UIDs and files."""

    study_uid: str
    study_date: str
    ct_series_uid: str
    ct_files: tuple[Path, ...]
    gsps_files: tuple[Path, ...]
    gsps_uids: tuple[str, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return self.ct_files + self.gsps_files


def make_study(out: Path, ct_slices: list[Path], date: str, gsps_sources: list[Path]) -> PeerStudy:
    """Copy real CT slices and real GSPS into one new study dated ``date`` with fresh UIDs.

    Each GSPS is re-pointed at one of the new CT instances (its Referenced Series Sequence).
    """
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = out / study_uid
    folder.mkdir(parents=True)
    ct_files, refs = [], []
    patient: dict[str, object] = {}
    for n, src in enumerate(ct_slices, 1):
        ds = pydicom.dcmread(src)
        patient = {k: ds.get(k, "") for k in _PATIENT_KEYS}
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = date
        ds.InstanceNumber = n
        ds.StudyID = "1"
        path = folder / f"ct{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ct_files.append(path)
        refs.append((ds.SOPClassUID, ds.SOPInstanceUID))
    gsps_files, gsps_uids = [], []
    pr_series = generate_uid()
    for n, src in enumerate(gsps_sources, 1):
        ds = pydicom.dcmread(src)
        for keyword, value in patient.items():  # one patient per study, as in a real PACS
            setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, pr_series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = ds.PresentationCreationDate = date
        ds.InstanceNumber = n
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = refs[(n - 1) % len(refs)]
        series_item = pydicom.Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedImageSequence = [ref]
        ds.ReferencedSeriesSequence = [series_item]
        path = folder / f"pr{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        gsps_files.append(path)
        gsps_uids.append(ds.SOPInstanceUID)
    return PeerStudy(study_uid, date, series_uid, tuple(ct_files), tuple(gsps_files),
                     tuple(gsps_uids))


def payload(path_or_bytes: Path | bytes) -> pydicom.Dataset:
    """The dataset of a file without its file meta (Orthanc may rewrite the meta)."""
    from io import BytesIO

    src = BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    ds = pydicom.dcmread(src)
    del ds.file_meta
    return ds


# --- shared pytest fixtures (imported by the test_pacs_* modules) ------------------------------

OUR_AET = "SAM2CT"


@dataclass(frozen=True)
class Corpus:
    """Four studies: A (Jan 5, GSPS), B (Jan 20, 2 GSPS), C (Jan 10, CT only), D (Feb 10, GSPS)."""

    a: PeerStudy
    b: PeerStudy
    c: PeerStudy
    d: PeerStudy

    @property
    def all(self) -> tuple[PeerStudy, ...]:
        return (self.a, self.b, self.c, self.d)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.all for f in s.files]


def make_corpus(out: Path, data: Path) -> Corpus:
    """Build :class:`Corpus` from real LUNG1 slices and real GSPS under ``data`` (shared/data)."""
    ct = sorted((data / "lung1/LUNG1-001/ct").glob("*.dcm"), key=lambda p: int(p.stem))[40:48]
    g = [data / s for s in GSPS_SOURCES]
    return Corpus(make_study(out, ct[0:3], "20260105", [g[0]]),
                  make_study(out, ct[3:5], "20260120", [g[1], g[2]]),
                  make_study(out, ct[5:7], "20260110", []),
                  make_study(out, ct[7:8], "20260210", [g[3]]))


# --- TLS: a throwaway certificate authority ----------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of two end entities it signed (valid for localhost and
    127.0.0.1): ``server`` for the peer, ``client`` for us (also used by our storage SCP)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Create a CA and a server and a client certificate under ``folder`` (cryptography package)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        return path

    def sign(subject: str, key, ca_key, issuer: str, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False).add_extension(x509.ExtendedKeyUsage([
                    ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = write_cert(sign("sam2ct test CA", ca_key, ca_key, "sam2ct test CA", ca=True),
                    folder / "ca.pem")
    files = [ca]
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files.append(write_cert(sign(f"sam2ct test {role}", key, ca_key, "sam2ct test CA",
                                     ca=False), folder / f"{role}.pem"))
        files.append(write_key(key, folder / f"{role}.key"))
    return TlsFiles(*files)
