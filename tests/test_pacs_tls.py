"""TLS against a real Orthanc (DicomTlsEnabled, client certificates required): C-ECHO, C-FIND,
C-GET, and C-MOVE back into our storage SCP over TLS too; and the refusals.

A throwaway CA signs Orthanc's certificate and ours (tests/pacs_peers.py: make_tls_files).
DCMTK's dcmqrscp is not built with TLS in Debian, so Orthanc is the only real TLS peer here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import free_port
from pacs_peers import OUR_AET, OrthancPeer, make_tls_files, payload

from dicom_io.pacs import (
    Backoff,
    LocalAE,
    PacsError,
    PacsSettings,
    PacsUnavailableError,
    QueryLevel,
    TlsOptions,
    echo,
    find,
    retrieve,
    staged_path,
)

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local
QUICK = Backoff(attempts=2, base=0.05, jitter=0.0)
TLS_AET = "SAM2CTTLS"  # our storage SCP listening with TLS, a second modality in Orthanc


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_local(tls) -> LocalAE:
    return LocalAE(TLS_AET, free_port(), tls=TlsOptions(ca_file=tls.ca, cert_file=tls.client_cert,
                                                         key_file=tls.client_key))


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory, tls, tls_local, local, corpus):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    modalities = {
        "sam2ct": [OUR_AET, "127.0.0.1", local.store_port],
        "sam2cttls": {"AET": TLS_AET, "Host": "127.0.0.1", "Port": tls_local.store_port,
                      "UseDicomTls": True},
    }
    peer = OrthancPeer(tmp_path_factory.mktemp("tls-orthanc"), free_port(), free_port(), OUR_AET,
                       local.store_port, extra={
                           "DicomTlsEnabled": True, "DicomTlsCertificate": str(tls.server_cert),
                           "DicomTlsPrivateKey": str(tls.server_key),
                           "DicomTlsTrustedCertificates": str(tls.ca),
                           "DicomTlsRemoteCertificateRequired": True,
                           "DicomModalities": modalities}).start()
    peer.upload(list(corpus.a.files))
    yield peer
    peer.kill()


def _pacs(peer: OrthancPeer, tls: TlsOptions) -> PacsSettings:
    return PacsSettings.parse(peer.address, tls=tls, backoff=QUICK, max_rate=100.0)


def _client(tls) -> TlsOptions:
    return TlsOptions(ca_file=tls.ca, cert_file=tls.client_cert, key_file=tls.client_key,
                      server_hostname="localhost")


def _assert_identical(staging: Path, study) -> None:
    for original in study.ct_files:
        want = payload(original)
        got = staged_path(staging, study.study_uid, study.ct_series_uid, want.SOPInstanceUID)
        assert payload(got) == want


def test_echo_find_get_over_tls(tls_orthanc, tls, tls_local, corpus, tmp_path) -> None:
    pacs = _pacs(tls_orthanc, _client(tls))
    echo(pacs, tls_local)
    found = find(pacs, tls_local, QueryLevel.STUDY, {"StudyDate": corpus.a.study_date})
    assert found.complete
    assert [d.StudyInstanceUID for d in found.matches] == [corpus.a.study_uid]
    report = retrieve(pacs, tls_local, tmp_path, corpus.a.study_uid, corpus.a.ct_series_uid,
                      method="get")
    assert report.complete and report.received == len(corpus.a.ct_files)
    _assert_identical(tmp_path, corpus.a)


def test_move_into_our_tls_storage_scp(tls_orthanc, tls, tls_local, corpus, tmp_path) -> None:
    """Orthanc opens the C-MOVE sub-association to our SCP over TLS (UseDicomTls), and our SCP
    (LocalAE.tls) accepts it only with Orthanc's certificate signed by the trusted CA."""
    report = retrieve(_pacs(tls_orthanc, _client(tls)), tls_local, tmp_path,
                      corpus.a.study_uid, corpus.a.ct_series_uid, method="move")
    assert report.complete and report.received == len(corpus.a.ct_files)
    assert report.suboperations.completed == len(corpus.a.ct_files)
    _assert_identical(tmp_path, corpus.a)


def test_tls_refusals(tls_orthanc, tls, tls_local, tmp_path) -> None:
    with pytest.raises(PacsUnavailableError, match="TLS handshake failed"):  # unknown CA
        echo(_pacs(tls_orthanc, TlsOptions(server_hostname="localhost")), tls_local)
    with pytest.raises(PacsError, match="refused our TLS certificate"):  # no client certificate
        echo(_pacs(tls_orthanc, TlsOptions(ca_file=tls.ca, server_hostname="localhost")),
             tls_local)
    other = make_tls_files(tmp_path / "other")  # a client certificate from another CA
    with pytest.raises(PacsError, match="refused our TLS certificate"):
        echo(_pacs(tls_orthanc, TlsOptions(ca_file=tls.ca, cert_file=other.client_cert,
                                           key_file=other.client_key,
                                           server_hostname="localhost")), tls_local)
    with pytest.raises(PacsError):  # plain DICOM to the TLS port does not get through
        echo(PacsSettings.parse(tls_orthanc.address, backoff=QUICK), tls_local)
