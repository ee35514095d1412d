"""Unit tests of the PACS client's plain parts: settings validation, politeness gate, staging."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from pacs_peers import scaled

from dicom_io.pacs import (
    Backoff,
    Gate,
    LocalAE,
    OutsidePacsHoursError,
    PacsHours,
    PacsSettings,
    RetrieveMethod,
    TlsOptions,
    WindowPolicy,
    staged_path,
)
from dicom_io.pacs.association import check_pacs_hours, drop_standard_log_handlers


def test_parse_address() -> None:
    pacs = PacsSettings.parse("PACS1@pacs.example.org:104", method="get")
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.method) == (
        "PACS1", "pacs.example.org", 104, RetrieveMethod.GET)
    assert pacs.address == "PACS1@pacs.example.org:104"
    assert PacsSettings.parse("X@[::1]:11112").host == "::1"


@pytest.mark.parametrize("bad", ["PACS@host", "@host:104", "PACS@:104", "PACS@host:0",
                                 "PACS@host:70000", "A_TITLE_LONGER_THAN_16@h:1", "PACS host:1"])
def test_bad_address_names_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        PacsSettings.parse(bad)


def test_settings_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="max_associations"):
        PacsSettings("P", "h", 104, max_associations=0)
    with pytest.raises(ValueError, match="'pacs.method' value 'push'"):
        PacsSettings("P", "h", 104, method="push")
    with pytest.raises(ValueError, match="allowed_callers"):
        LocalAE("ME", 11112, allowed_callers=("BAD\\AET",))
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsOptions(cert_file=Path("c.pem"))
    assert LocalAE(" ME ", 11112).ae_title == "ME"


def test_pacs_hours_wraps_midnight() -> None:
    window = PacsHours.parse("19:00-07:00")
    assert window.contains(dt.time(23, 30)) and window.contains(dt.time(6, 59))
    assert not window.contains(dt.time(12, 0))
    noon = dt.datetime(2026, 1, 5, 12, 0)
    assert window.seconds_until_open(noon) == 7 * 3600
    pacs = PacsSettings("P", "h", 104, pacs_hours=window)
    with pytest.raises(OutsidePacsHoursError) as info:
        check_pacs_hours(pacs, noon)
    assert info.value.seconds_until_open == 7 * 3600
    check_pacs_hours(pacs, dt.datetime(2026, 1, 5, 20, 0))  # open: no error


def test_window_policy_and_tls_settings_validate() -> None:
    assert PacsSettings("P", "h", 104).window_policy is WindowPolicy.WAIT
    assert PacsSettings("P", "h", 104, window_policy="fail").window_policy is WindowPolicy.FAIL
    with pytest.raises(ValueError, match="'window_policy' value 'later' - use wait or fail"):
        PacsSettings("P", "h", 104, window_policy="later")
    with pytest.raises(ValueError, match="'window_max_wait' value '-1'"):
        PacsSettings("P", "h", 104, window_max_wait=-1)
    with pytest.raises(ValueError, match="'pacs_hours' value '07:00-07:00' - start equals end"):
        PacsHours.parse("07:00-07:00")
    with pytest.raises(ValueError, match="'local.tls' - our storage SCP needs cert_file"):
        LocalAE("ME", 11112, tls=TlsOptions(ca_file=Path("ca.pem")))


def test_pynetdicom_logging_handlers_found_and_dropped_by_public_api() -> None:
    """Fails loudly if pynetdicom stops binding its per-message logging handlers the way
    drop_standard_log_handlers expects (then it would silently drop nothing)."""
    import logging

    from pynetdicom import AE, evt
    from pynetdicom.association import Association

    def ours(event: evt.Event) -> None:
        pass

    assoc = Association(AE(), "requestor")
    log_events = (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT)
    assoc.bind(evt.EVT_DIMSE_RECV, ours)
    bound = {e.name: [h.__module__ for h, _ in assoc.get_handlers(e)] for e in log_events}
    assert all("pynetdicom._handlers" in modules for modules in bound.values()), bound
    logger = logging.getLogger("pynetdicom")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        drop_standard_log_handlers(assoc)
    finally:
        logger.setLevel(old)
    left = {e.name: [h for h, _ in assoc.get_handlers(e)] for e in log_events}
    assert left == {"EVT_DIMSE_RECV": [ours], "EVT_DIMSE_SENT": [], "EVT_PDU_RECV": [],
                    "EVT_PDU_SENT": []}


def test_backoff_grows_and_is_capped() -> None:
    policy = Backoff(attempts=5, base=1.0, maximum=3.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_gate_caps_concurrency() -> None:
    gate = Gate(max_associations=2, max_rate=1000.0)
    inside = threading.Barrier(2, timeout=scaled(5.0))

    def work() -> None:
        with gate.slot():
            inside.wait()  # two holders meet; a third could only enter after they leave

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.peak == 2 and gate.active == 0


def test_gate_spaces_openings_by_the_rate(monkeypatch) -> None:
    import dicom_io.pacs.association as association

    waits: list[float] = []
    monkeypatch.setattr(association.time, "monotonic", lambda: 100.0)  # all ask at once
    monkeypatch.setattr(association.time, "sleep", waits.append)
    gate = Gate(max_associations=1, max_rate=4.0)
    for _ in range(3):
        with gate.slot():
            pass
    assert waits == [0.25, 0.5]  # the first goes at once, then one every 1/4 s


def test_staged_path_refuses_unsafe_uids(tmp_path: Path) -> None:
    assert staged_path(tmp_path, "1.2", "1.2.3", "1.2.3.4") == tmp_path / "1.2/1.2.3/1.2.3.4.dcm"
    for bad in ("../etc", "1.2/3", "", "1." + "2" * 70):
        with pytest.raises(ValueError, match="not a DICOM UID"):
            staged_path(tmp_path, bad, "1.2", "1.3")
