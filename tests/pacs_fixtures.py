"""pytest fixtures for the PACS tests (load with ``pytest_plugins = ["pacs_fixtures"]``).

Session-scoped, so one Orthanc and one dcmqrscp serve every PACS test module (tests only add to
them): the corpus of test studies, our local AE, and the two peers loaded with the corpus. A peer
is handed to the tests only once it answers for every file loaded (polled, never slept for):
Orthanc's REST index counts them all, dcmqrscp's C-FIND lists every instance of every study.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from conftest import free_port, shared
from pacs_peers import OUR_AET, OrthancPeer, QrscpPeer, make_corpus, scaled

from dicom_io.pacs import LocalAE, PacsSettings, QueryLevel, Timeouts, find, store_files


def wait_for(holds: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll ``holds`` until it is true; raise naming ``what`` after ``timeout`` seconds (as
    long again for each core's worth of load on the machine)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(0.05)


def orthanc_loaded(peer: OrthancPeer, instances: int) -> None:
    """Wait until Orthanc's index (GET /statistics) holds ``instances`` instances."""
    wait_for(lambda: peer.rest("/statistics")["CountInstances"] == instances,
             f"Orthanc indexing {instances} instances")


def qrscp_lists(peer: QrscpPeer, local: LocalAE, instances: dict[str, int]) -> None:
    """Wait until dcmqrscp's C-FIND lists ``instances[study_uid]`` instances of each study."""
    pacs = PacsSettings.parse(peer.address, max_rate=100.0)

    def listed(study_uid: str) -> bool:
        keys = {"StudyInstanceUID": study_uid}
        return len(find(pacs, local, QueryLevel.IMAGE, keys).matches) == instances[study_uid]

    for study_uid in instances:
        wait_for(lambda s=study_uid: listed(s), f"dcmqrscp listing study {study_uid}")


def load_qrscp(peer: QrscpPeer, local: LocalAE, files: list[Path]) -> None:
    """C-STORE ``files`` into dcmqrscp (timeouts stretched on a loaded machine), then wait
    until its C-FIND lists every one of them."""
    timeouts = Timeouts(acse=scaled(30.0), dimse=scaled(60.0), network=scaled(60.0),
                        connect=scaled(10.0))
    report = store_files(PacsSettings.parse(peer.address, timeouts=timeouts), local, files)
    assert report.ok and report.stored == len(files), report.failed
    studies = Counter(str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                      for f in files)
    qrscp_lists(peer, local, dict(studies))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), shared("lung1").parent)


@pytest.fixture(scope="session")
def local() -> LocalAE:
    return LocalAE(OUR_AET, free_port())


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, corpus, local):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    peer = OrthancPeer(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(), OUR_AET,
                       local.store_port, limit_find_results=2, verbose=True).start()
    peer.upload(corpus.files)
    orthanc_loaded(peer, len(corpus.files))
    yield peer
    peer.kill()  # nothing to keep: no need to wait for a graceful stop


@pytest.fixture(scope="session")
def qrscp(tmp_path_factory, corpus, local):
    if shutil.which("dcmqrscp") is None:
        pytest.skip("dcmqrscp (Debian package dcmtk) is not installed")
    peer = QrscpPeer(tmp_path_factory.mktemp("qrscp"), free_port(), OUR_AET,
                     local.store_port).start()
    load_qrscp(peer, local, corpus.files)
    yield peer
    peer.stop()


@pytest.fixture(scope="session", params=["orthanc", "dcmqrscp"])
def peer(request):
    return request.getfixturevalue("orthanc" if request.param == "orthanc" else "qrscp")


@pytest.fixture
def fresh_orthanc(tmp_path, corpus, local):
    """An Orthanc of its own (the test may kill or freeze it) holding study A and C of the corpus."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    peer = OrthancPeer(tmp_path / "orthanc", free_port(), free_port(), OUR_AET,
                       local.store_port).start()
    peer.upload(list(corpus.a.files))
    orthanc_loaded(peer, len(corpus.a.files))
    yield peer
    if peer.proc is not None:
        os.kill(peer.proc.pid, signal.SIGCONT)
    peer.kill()
