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
import logging
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from dicom_io.pacs import LocalAE, PacsHours, PacsSettings, RetrieveMethod
from flows.limits import JobLimits
from flows.settings import Settings

logger = logging.getLogger(__name__)

#: the options offered as flags of ``sam2ct harvest`` and ``backfill``: field -> flag (type,
#: help and bounds come from the field)
CLI_FLAGS = {"pacs": "--pacs", "catalog_url": "--catalog", "staging_dir": "--staging",
             "output_dir": "--out", "model": "--model", "max_associations": "--max-associations",
             "pacs_hours": "--pacs-hours", "store_back": "--store-back",
             "segment_deployment": "--segment-deployment",
             "segment_workers": "--segment-workers"}


class HarvestOptions(BaseModel):
    """Where to harvest from, where results go, and how politely (bounds checked by pydantic).

    Each option is declared here once: its type, bounds, default and description; ``Settings``
    gives the defaults of the fields it shares by name, and ``sam2ct harvest`` / ``backfill``
    derive their flags from ``CLI_FLAGS``.
    """

    model_config = ConfigDict(frozen=True)

    pacs: str = Field(description="the PACS as AET@host:port")
    method: RetrieveMethod = Field(RetrieveMethod.MOVE, description="move | get")
    ae_title: str = Field("SAM2CT", description="our AE title")
    store_port: int = Field(11113, ge=1, le=65535, description="our storage SCP's port")
    allowed_callers: tuple[str, ...] = Field(
        (), description="AE titles besides the PACS allowed to send to our storage SCP")
    bind_address: str | None = Field(
        None, description="IP address our storage SCP listens on; None: the local address of "
        "the route to the PACS; 0.0.0.0: every interface")
    catalog_url: SecretStr = Field(description="catalog URL (may hold a password: kept secret)")
    staging_dir: Path = Field(description="where retrieved DICOM is staged")
    output_dir: Path = Field(description="SEG output folder")
    model: str = Field("auto", description="auto | classical | PATH.pt")
    device: str | None = Field(None, description="cuda | mps | cpu (default: best available)")
    max_associations: int = Field(2, ge=1, le=32, description="PACS associations at once")
    rate_per_second: float = Field(5.0, gt=0, le=1000, description="association openings per s")
    store_back: bool = Field(False, description="C-STORE our SEGs back to the PACS")
    segment_deployment: str | None = Field(
        None, description="'segment-batch/segment' to run on the GPU pool; None: in-process")
    batch_size: int = Field(4, ge=1, le=256, description="series per segment batch")
    segment_workers: int | None = Field(
        None, ge=0, le=64, description="segment worker processes; 0: in the flow's process; "
        "None: one per core (at most 4), one on a GPU")
    segment_time_limit_s: float | None = Field(
        3600.0, gt=0, description="seconds one series may take to load and segment; past it "
        "the series is a recorded failure (None: no limit)")
    segment_memory_mb: int | None = Field(
        None, ge=256, description="address space of each CPU segment worker (MiB); None: 80 % "
        "of the machine's memory shared by the workers")
    lease_seconds: float = Field(60.0, ge=60, le=3600, description="concurrency slot lease")
    pacs_hours: str | None = Field(
        None, validation_alias=AliasChoices("pacs_hours", "harvest_window"),
        description="HH:MM-HH:MM local time the PACS may be used (may wrap midnight); "
        "formerly 'harvest_window'")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "harvest_window" in data:
            logger.warning("the option 'harvest_window' is deprecated: it is 'pacs_hours', the "
                           "hours the PACS may be used (the study dates are the window)")
        return data

    @field_validator("pacs")
    @classmethod
    def _valid_pacs(cls, value: str) -> str:
        PacsSettings.parse(value)
        return value

    @field_validator("pacs_hours")
    @classmethod
    def _valid_hours(cls, value: str | None) -> str | None:
        if value is not None:
            PacsHours.parse(value)
        return value

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> HarvestOptions:
        """Options from the loaded ``Settings`` (every field of the same name, the folders in
        its data folder); ``overrides`` win. Raises if no PACS is set."""
        values: dict[str, Any] = {name: getattr(settings, name) for name in cls.model_fields
                                  if getattr(settings, name, None) is not None}
        values.update(method=RetrieveMethod(settings.pacs_method),
                      allowed_callers=tuple(settings.allowed_callers),
                      staging_dir=settings.data_dir / "staging",
                      output_dir=settings.data_dir / "seg")
        values.update(overrides)
        if not values.get("pacs"):
            raise ValueError("no PACS configured - set SAM2CT_PACS=AET@host:port")
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
        """The PACS client's settings, with our politeness limits and the PACS hours."""
        hours = PacsHours.parse(self.pacs_hours) if self.pacs_hours else None
        return PacsSettings.parse(self.pacs, method=self.method,
                                  max_associations=self.max_associations,
                                  max_rate=self.rate_per_second, pacs_hours=hours)

    def job_limits(self) -> JobLimits:
        """The time and memory limits of each series' segment job."""
        return JobLimits(seconds=self.segment_time_limit_s, memory_mb=self.segment_memory_mb)

    def local_ae(self) -> LocalAE:
        """Ourselves: AE title, storage SCP address and port, and who may send to it."""
        return LocalAE(self.ae_title, self.store_port, self.allowed_callers,
                       bind_address=self.bind_address)


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
