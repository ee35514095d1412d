"""Parameters of the harvest flows: one validated pydantic model, built from Settings once.

Prefect validates flow parameters against this model, so a deployment's bad value fails at the
start with the field named, not halfway through a night.

Example
-------
>>> opts = HarvestOptions(pacs="ORTHANC@127.0.0.1:4242", catalog_url="sqlite:///c.sqlite",
...                       staging_dir="staging", output_dir="seg")
>>> opts.pacs_settings().ae_title
'ORTHANC'
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from dicom_io.pacs import HarvestWindow, LocalAE, PacsSettings, RetrieveMethod
from flows.settings import Settings


class HarvestOptions(BaseModel):
    """Where to harvest from, where results go, and how politely (bounds checked by pydantic)."""

    model_config = ConfigDict(frozen=True)

    pacs: str = Field(description="the PACS as AET@host:port")
    method: RetrieveMethod = RetrieveMethod.MOVE
    ae_title: str = "SAM2CT"
    store_port: int = Field(11113, ge=1, le=65535)
    allowed_callers: tuple[str, ...] = ()
    catalog_url: SecretStr = Field(description="catalog URL (may hold a password: kept secret)")
    staging_dir: Path
    output_dir: Path
    model: str = "auto"
    device: str | None = None
    max_associations: int = Field(2, ge=1, le=32, description="PACS associations at once")
    rate_per_second: float = Field(5.0, gt=0, le=1000, description="association openings per s")
    store_back: bool = Field(False, description="C-STORE our SEGs back to the PACS")
    segment_deployment: str | None = Field(
        None, description="'segment-batch/segment' to run on the GPU pool; None: in-process")
    batch_size: int = Field(4, ge=1, le=256, description="series per segment batch")
    segment_workers: int | None = Field(
        None, ge=0, le=64, description="segment worker processes; 0: in the flow's process; "
        "None: one per core (at most 4), one on a GPU")
    lease_seconds: float = Field(60.0, ge=60, le=3600, description="concurrency slot lease")
    harvest_window: str | None = Field(
        None, description="HH:MM-HH:MM local time the PACS may be used (may wrap midnight)")

    @field_validator("pacs")
    @classmethod
    def _valid_pacs(cls, value: str) -> str:
        PacsSettings.parse(value)
        return value

    @field_validator("harvest_window")
    @classmethod
    def _valid_window(cls, value: str | None) -> str | None:
        if value is not None:
            HarvestWindow.parse(value)
        return value

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> HarvestOptions:
        """Options from the loaded ``Settings``; ``overrides`` win. Raises if no PACS is set."""
        pacs = overrides.pop("pacs", None) or settings.pacs
        if not pacs:
            raise ValueError("no PACS configured - set SAM2CT_PACS=AET@host:port")
        values: dict[str, Any] = {
            "pacs": pacs, "method": RetrieveMethod(settings.pacs_method),
            "ae_title": settings.ae_title, "store_port": settings.store_port,
            "allowed_callers": tuple(settings.allowed_callers),
            "catalog_url": settings.catalog_url, "staging_dir": settings.data_dir / "staging",
            "output_dir": settings.data_dir / "seg", "model": settings.model,
            "device": settings.device, "harvest_window": settings.harvest_window,
            "segment_deployment": settings.segment_deployment,
            "segment_workers": settings.segment_workers,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def catalog(self) -> str:
        """The catalog URL in clear (never logged; shown masked in Prefect's parameters)."""
        return self.catalog_url.get_secret_value()

    @property
    def pacs_aet(self) -> str:
        """The PACS's AE title (names its concurrency limits)."""
        return self.pacs_settings().ae_title

    def pacs_settings(self) -> PacsSettings:
        """The PACS client's settings, with our politeness limits and harvest window."""
        window = HarvestWindow.parse(self.harvest_window) if self.harvest_window else None
        return PacsSettings.parse(self.pacs, method=self.method,
                                  max_associations=self.max_associations,
                                  max_rate=self.rate_per_second, harvest_window=window)

    def local_ae(self) -> LocalAE:
        """Ourselves: AE title, storage SCP port and who may send to it."""
        return LocalAE(self.ae_title, self.store_port, self.allowed_callers)


def resolve_window(start: dt.date | None, end: dt.date | None,
                   today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The inclusive study-date window: both given, or yesterday (the nightly default)."""
    if start is None and end is None:
        yesterday = (today or dt.date.today()) - dt.timedelta(days=1)
        return yesterday, yesterday
    start, end = (start or end), (end or start)
    if end < start:  # type: ignore[operator]
        raise ValueError(f"Invalid harvest window {start}..{end} - end before start")
    return start, end


def window_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The catalog's half-open UTC interval [start 00:00, end+1 00:00) of a date window."""
    lo = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return lo, hi
