"""Unit tests of the PACS client's plain parts: settings validation, politeness gate, staging."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from dicom_io.pacs import (
    Backoff,
    Gate,
    HarvestWindow,
    LocalAE,
    OutsideHarvestWindowError,
    PacsSettings,
    RetrieveMethod,
    TlsOptions,
    staged_path,
)
from dicom_io.pacs.association import check_harvest_window
from dicom_io.pacs.storage import write_atomic


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


def test_harvest_window_wraps_midnight() -> None:
    window = HarvestWindow.parse("19:00-07:00")
    assert window.contains(dt.time(23, 30)) and window.contains(dt.time(6, 59))
    assert not window.contains(dt.time(12, 0))
    noon = dt.datetime(2026, 1, 5, 12, 0)
    assert window.seconds_until_open(noon) == 7 * 3600
    pacs = PacsSettings("P", "h", 104, harvest_window=window)
    with pytest.raises(OutsideHarvestWindowError) as info:
        check_harvest_window(pacs, noon)
    assert info.value.seconds_until_open == 7 * 3600
    check_harvest_window(pacs, dt.datetime(2026, 1, 5, 20, 0))  # open: no error


def test_backoff_grows_and_is_capped() -> None:
    policy = Backoff(attempts=5, base=1.0, maximum=3.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_gate_caps_concurrency() -> None:
    gate = Gate(max_associations=2, max_rate=1000.0)
    inside = threading.Barrier(2, timeout=5)

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


def test_write_atomic_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.dcm"
    write_atomic(target, b"data")
    assert target.read_bytes() == b"data"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_atomic(blocker / "c.dcm", b"data")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.dcm", "file"]
