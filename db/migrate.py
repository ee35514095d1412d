"""Run the catalog's Alembic migrations programmatically (they ship inside the package)."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, select

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
    _migrate(target, "upgrade", revision)


def downgrade(target: str | Engine, revision: str) -> None:
    """Migrate the catalog at ``target`` (URL or Engine) back down to ``revision``."""
    _migrate(target, "downgrade", revision)


def _migrate(target: str | Engine, direction: str, revision: str) -> None:
    """Run Alembic's upgrade or downgrade in one transaction.

    SQLite: foreign keys are off meanwhile, because a migration that rebuilds a table (copy,
    drop, rename) would otherwise cascade the drop's deletes into the tables referencing it;
    ``PRAGMA foreign_key_check`` must then find no violation before the commit.
    """
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as connection, _one_at_a_time(connection), \
                _sqlite_foreign_keys_off(connection):
            with connection.begin(), _quiet_alembic():
                from alembic import command  # imported here: its plugins log at INFO

                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                getattr(command, direction)(cfg, revision)
                _check_foreign_keys(connection)
    finally:
        if isinstance(target, str):
            engine.dispose()


#: pg_advisory_lock key of catalog migrations ("SAM2MIG" in ASCII)
_MIGRATION_LOCK = 0x53414D324D4947


@contextmanager
def _one_at_a_time(connection: Connection) -> Iterator[None]:
    """Migrations of one catalog run one after another across processes, each reading the
    schema's revision only once the one before committed (it then finds nothing to do): two
    worker processes opening a new catalog at once would otherwise both create its tables.
    PostgreSQL: a session advisory lock; SQLite: a lock file beside the database."""
    dialect, database = connection.dialect.name, connection.engine.url.database
    if dialect == "postgresql":
        connection.execute(select(func.pg_advisory_lock(_MIGRATION_LOCK)))
        connection.commit()
        try:
            yield
        finally:
            connection.execute(select(func.pg_advisory_unlock(_MIGRATION_LOCK)))
            connection.commit()
        return
    if dialect != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite: foreign keys off for the block (outside any transaction, where the pragma works)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def _check_foreign_keys(connection: Connection) -> None:
    """SQLite: raise (rolling the migration back) when a row references a missing parent."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise ValueError(f"Invalid catalog after migration - {len(broken)} row(s) of {tables} "
                         "reference missing rows; rolled back")


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
