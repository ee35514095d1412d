"""One settings object, read once from ``SAM2CT_*`` variables and an optional ``sam2ct.toml``."""

from __future__ import annotations

import logging
import os
import zoneinfo
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """The user's data folder for the catalog and staging (XDG on Linux)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sam2ct"


class Settings(BaseSettings):
    """Everything configurable. Load with ``Settings()``; pass the object on, never re-read it."""

    model_config = SettingsConfigDict(env_prefix="SAM2CT_", toml_file="sam2ct.toml", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: SQLite file in data_dir
    pacs: str | None = None  # "AET@host:port"
    pacs_method: str = "move"  # move | get
    ae_title: str = "SAM2CT"
    store_port: int = 11113
    bind_address: str | None = None  # storage SCP's IP; None: the route to the PACS; 0.0.0.0: all
    allowed_callers: list[str] = Field(default_factory=list)
    pacs_hours: str | None = None  # "19:00-07:00": when the PACS may be used (local time)
    harvest_window: str | None = None  # deprecated name of pacs_hours (SAM2CT_HARVEST_WINDOW)
    model: str = "auto"  # auto | classical | path to a SAM2CT checkpoint
    device: str | None = None  # cuda | mps | cpu; None picks the best available
    segment_deployment: str | None = None  # "segment-batch/segment": segment on the GPU pool
    segment_workers: int | None = None  # worker processes; 0: in the flow; None: one per core
    segment_time_limit_s: float | None = 3600.0  # per series; past it: the series' failure
    segment_memory_mb: int | None = None  # per worker; None: 80 % of memory over the workers
    reconcile_days: int = Field(7, ge=1)  # the nightly reconciliation re-counts this many days
    timezone: str | None = None  # IANA name the schedules run in (prefect deploy); None: UTC
    code_dir: Path | None = None  # where workers find flows/; None: where flows is imported from

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):  # noqa: D102
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value:  # empty: not set
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"Invalid 'timezone' value {value!r} - not an IANA timezone "
                                 "name such as Europe/Amsterdam") from None
        return value or None

    @model_validator(mode="after")
    def _old_names(self) -> Settings:
        if self.harvest_window is not None:
            logger.warning("SAM2CT_HARVEST_WINDOW is deprecated: set SAM2CT_PACS_HOURS, the "
                           "hours the PACS may be used (a harvest's window is its study dates)")
            if self.pacs_hours is None:
                self.pacs_hours = self.harvest_window
        return self

    @property
    def catalog_url(self) -> str:
        """SQLAlchemy URL of the catalog (SQLite in the data folder unless configured)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'catalog.sqlite'}"
