"""Reconciliation: past windows re-counted on the PACS against the catalog; what is missing is
harvested.

A GSPS that a night's discovery missed would be lost for good: the next night queries the next
window. ``reconcile`` discovers each window of a range again (checked, as the harvest's is: see
:class:`dicom_io.pacs.Discovery`) and compares the GSPS SOP Instance UIDs found with those the
catalog holds. A window whose GSPS are all catalogued and whose answers added up costs that
discovery's C-FINDs (one association) and nothing else; any other window is harvested again by
a ``nightly-harvest`` subflow, which skips what is done and retrieves only what is missing.

Example
-------
>>> reconcile(days=7)  # the 7 days up to yesterday  # doctest: +SKIP
>>> reconcile(dt.date(2026, 1, 1), dt.date(2026, 1, 31), options=options)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, replace

from prefect import flow
from sqlalchemy import Engine

from db import Recorder
from db.records import FailureRecord, Stage
from flows.harvest import ITEM_ERRORS, nightly_harvest, to_harvest, windows
from flows.options import HarvestOptions, resolve_window
from flows.segment_jobs import catalog_engine
from flows.settings import Settings
from flows.tasks import discover, ensure_pacs_limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowCheck:
    """What reconciling one window found; ``harvest``: the summary of its harvest, when it
    needed one; ``error``: why its discovery failed (recorded in the catalog)."""

    window_start: str
    window_end: str
    found: int = 0
    missing: int = 0
    complete: bool = False
    queries: int = 0
    harvest: dict | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        """Every GSPS on the PACS is catalogued and every answer added up."""
        return self.error is None and self.complete and not self.missing

    def to_json(self) -> dict:
        """A JSON-ready dict (what the flow returns and the CLI prints)."""
        return {**asdict(self), "clean": self.clean}


def reconcile_range(start: dt.date | None, end: dt.date | None, days: int,
                    today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The study dates to reconcile: ``start..end`` when given, else the ``days`` days up to
    yesterday (today's studies are still being read)."""
    if start is not None or end is not None:
        return resolve_window(start, end)
    if days < 1:
        raise ValueError(f"Invalid 'days' value {days} - must be at least 1")
    yesterday = (today or dt.date.today()) - dt.timedelta(days=1)
    return yesterday - dt.timedelta(days=days - 1), yesterday


@flow(name="reconcile")
def reconcile(start: dt.date | None = None, end: dt.date | None = None, days: int | None = None,
              chunk_days: int = 1, options: HarvestOptions | None = None) -> list[dict]:
    """Re-count ``start..end`` (default: the last ``days`` days, ``SAM2CT_RECONCILE_DAYS``) on
    the PACS window by window against the catalog; harvest each window that lacks a GSPS or
    whose discovery did not add up. Returns one :class:`WindowCheck` (as JSON) per window."""
    settings = Settings()
    opts = options or HarvestOptions.from_settings(settings)
    first, last = reconcile_range(start, end, settings.reconcile_days if days is None else days)
    ensure_pacs_limits(opts)
    engine = catalog_engine(opts.catalog)
    return [check_window(opts, engine, lo, hi).to_json()
            for lo, hi in windows(first, last, chunk_days)]


def check_window(opts: HarvestOptions, engine: Engine, start: dt.date,
                 end: dt.date) -> WindowCheck:
    """Discover one window and compare with the catalog; harvest it when anything is missing.

    A failed discovery is recorded (stage ``discover``, the window) and the range goes on.
    """
    window = f"window {start}..{end}"
    try:
        found = discover(opts, start, end)
    except ITEM_ERRORS as exc:
        Recorder(engine).record_failure(FailureRecord(Stage.DISCOVER, window,
                                                      type(exc).__name__, str(exc)))
        logger.warning("reconcile: discovery of %s failed: %s", window, exc)
        return WindowCheck(str(start), str(end), error=str(exc))
    missing = to_harvest(engine, found.gsps)
    check = WindowCheck(str(start), str(end), len(found.gsps), len(missing), found.complete,
                        found.queries)
    if check.clean:
        logger.info("reconcile: %s: %d GSPS, all catalogued (%d C-FINDs)", window,
                    check.found, check.queries)
        return check
    logger.warning("reconcile: %s: %d of %d GSPS not catalogued%s; harvesting it", window,
                   check.missing, check.found,
                   "" if found.complete else ", its discovery did not add up")
    return replace(check, harvest=nightly_harvest(start, end, opts))
