"""The PACS hours against a real Orthanc: a job started just before the window opens waits for
it; a backfill that reaches the window's end pauses until it opens again; "fail" and the maximum
wait refuse at once. The clock is injected: local time starts where the test needs it and runs
in real time, except that its sleeps may be compressed (``speed``) so a 12-hour pause is short.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest
from pacs_peers import scaled
from pynetdicom.sop_class import Verification

from dicom_io.pacs import OutsidePacsHoursError, PacsHours, PacsSettings
from dicom_io.pacs.association import build_context, open_association

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc
NIGHT = PacsHours.parse("19:00-07:00")


class TestClock:
    """Local time from ``start``, advancing with real time; each sleep takes 1/``speed`` of its
    nominal length in real time but advances local time by all of it."""

    __test__ = False  # not a test class

    def __init__(self, start: dt.datetime, speed: float = 1.0) -> None:
        self.start, self.speed = start, speed
        self.t0 = time.monotonic()
        self.skipped = 0.0  # nominal seconds slept but not spent in real time
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.t0 + self.skipped)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds / self.speed)
        self.skipped += seconds * (1 - 1 / self.speed)


def _pacs(peer, **options) -> PacsSettings:
    return PacsSettings.parse(peer.address, pacs_hours=NIGHT, max_rate=100.0, **options)


def _echo(pacs: PacsSettings, local, clock: TestClock) -> dt.datetime:
    """C-ECHO in an association opened with ``clock``; return the local time it opened at."""
    with open_association(pacs, local, [build_context(Verification)], clock=clock) as assoc:
        opened = clock.now()
        assert assoc.send_c_echo().Status == 0x0000
    return opened


def _waiting_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "for it to open" in r.getMessage()]


def test_job_started_before_the_window_waits_for_it(orthanc, local, caplog) -> None:
    clock = TestClock(dt.datetime(2026, 1, 5, 18, 59, 59))  # real time: waits 1 s
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dicom_io.pacs.association"):
        opened = _echo(_pacs(orthanc), local, clock)
    assert opened >= dt.datetime(2026, 1, 5, 19, 0)
    assert 0.9 <= time.monotonic() - began < scaled(5.0)
    assert len(_waiting_lines(caplog)) == 1 and "19:00-07:00" in _waiting_lines(caplog)[0]


def test_backfill_pauses_at_the_end_of_the_window_and_resumes(orthanc, local, caplog) -> None:
    """Associations open before 07:00 go ahead; after 07:00 the next one waits until 19:00
    (12 h of local time, ~0.5 s of real time). The first opens within a second before 07:00
    (more on a loaded machine)."""
    seven = dt.datetime(2026, 1, 6, 7, 0)
    clock = TestClock(seven - dt.timedelta(seconds=scaled(1.0)), speed=86400.0)
    pacs = _pacs(orthanc)
    first = _echo(pacs, local, clock)
    assert first.time() < dt.time(7, 0) and not clock.sleeps
    time.sleep(max(0.0, (seven - clock.now()).total_seconds()) + 0.05)
    with caplog.at_level(logging.INFO, logger="dicom_io.pacs.association"):
        second = _echo(pacs, local, clock)
    assert second >= dt.datetime(2026, 1, 6, 19, 0)
    assert second < dt.datetime(2026, 1, 6, 19, 1)
    assert len(_waiting_lines(caplog)) == 1  # logged once, not at every short sleep
    assert len(clock.sleeps) > 100 and max(clock.sleeps) <= 30.0  # short steps


def test_fail_policy_and_maximum_wait_refuse_at_once(orthanc, local) -> None:
    clock = TestClock(dt.datetime(2026, 1, 5, 18, 55), speed=86400.0)
    with pytest.raises(OutsidePacsHoursError, match="window_policy is fail") as info:
        _echo(_pacs(orthanc, window_policy="fail"), local, clock)
    assert 300 - scaled(1.0) <= info.value.seconds_until_open <= 301
    with pytest.raises(OutsidePacsHoursError, match="later than window_max_wait 60 s"):
        _echo(_pacs(orthanc, window_max_wait=60.0), local, clock)
    assert clock.sleeps == []  # refused without sleeping
    assert _echo(_pacs(orthanc, window_max_wait=600.0), local, clock).time() >= dt.time(19, 0)
