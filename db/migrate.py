"""Run the catalog's Alembic migrations programmatically (they ship inside the package)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from db.engine import make_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs every plugin at INFO; keep that out of the CLI's stderr unless debugging."""
    logger = logging.getLogger("alembic")
    before = logger.level
    if before == logging.NOTSET and not logging.getLogger().isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


def upgrade(target: str | Engine, revision: str = "head") -> None:
    """Migrate the catalog at ``target`` (URL or Engine) to ``revision``; safe to run again."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as connection:
            with _quiet_alembic():
                from alembic import command  # imported here: its plugins log at INFO

                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision)
    finally:
        if isinstance(target, str):
            engine.dispose()


def current_revision(target: str | Engine) -> str | None:
    """The revision the catalog at ``target`` is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as connection, _quiet_alembic():
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if isinstance(target, str):
            engine.dispose()
