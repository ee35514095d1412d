"""An embedded PACS for `sam2ct demo`: Orthanc when installed, else pynetdicom's qrscp app.

Either runs as a child process on free loopback ports with its storage under one folder, knows our
AE as a C-MOVE destination, and is loaded with C-STORE by our own client.

Example
-------
>>> with start_embedded_pacs(Path("demo/pacs"), our_aet="SAM2CT", our_port=11113) as pacs:
...     print(pacs.address)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

PACS_AET = "DEMOPACS"


class PacsKind(StrEnum):
    """Which embedded PACS runs."""

    ORTHANC = "orthanc"
    QRSCP = "pynetdicom-qrscp"


@dataclass(frozen=True)
class EmbeddedPacs:
    """A running embedded PACS: its kind, DICOM port and folder."""

    kind: PacsKind
    port: int
    folder: Path

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:port``."""
        return f"{PACS_AET}@127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _orthanc_config(folder: Path, port: int, http_port: int, our_aet: str, our_port: int) -> dict:
    return {"Name": "sam2ct-demo", "DicomAet": PACS_AET, "DicomPort": port, "HttpPort": http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "Plugins": [], "DicomModalities": {"sam2ct": [our_aet, "127.0.0.1", our_port]},
            "DicomCheckCalledAet": True, "StorageCompression": False, "SynchronousCMove": True,
            "DeidentifyLogs": True, "SaveJobs": False}


def _qrscp_config(folder: Path, port: int, our_aet: str, our_port: int) -> str:
    return (f"[DEFAULT]\nae_title: {PACS_AET}\nport: {port}\nmax_pdu: 0\nacse_timeout: 30\n"
            "dimse_timeout: 30\nnetwork_timeout: 30\nbind_address: 127.0.0.1\n"
            f"instance_location: {folder / 'instances'}\n"
            f"database_location: {folder / 'instances.sqlite'}\nlog_identifier: False\n\n"
            f"[{our_aet}]\naddress: 127.0.0.1\nport: {our_port}\n")


def _command(kind: PacsKind, folder: Path, port: int, our_aet: str, our_port: int) -> list[str]:
    if kind is PacsKind.ORTHANC:
        cfg = folder / "orthanc.json"
        cfg.write_text(json.dumps(_orthanc_config(folder, port, free_port(), our_aet, our_port)))
        return [shutil.which("Orthanc") or "Orthanc", str(cfg)]
    cfg = folder / "qrscp.ini"
    cfg.write_text(_qrscp_config(folder, port, our_aet, our_port))
    return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(cfg)]


def _wait(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded PACS exited with status {proc.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"embedded PACS did not listen on port {port} within {timeout:.0f} s")


@contextmanager
def start_embedded_pacs(folder: Path, our_aet: str, our_port: int,
                        kind: PacsKind | None = None) -> Iterator[EmbeddedPacs]:
    """Run an embedded PACS storing under ``folder`` until the block ends."""
    kind = kind or (PacsKind.ORTHANC if shutil.which("Orthanc") else PacsKind.QRSCP)
    folder = Path(folder) / kind.value
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "pacs.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(_command(kind, folder, port, our_aet, our_port), stdout=out,
                                stderr=subprocess.STDOUT, cwd=folder)
    try:
        _wait(port, proc, log)
        yield EmbeddedPacs(kind, port, folder)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
