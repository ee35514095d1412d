"""Engines for the catalog: SQLite (embedded default) or PostgreSQL via psycopg 3."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url

# How long a SQLite writer waits for another process's lock before failing (ms).
_SQLITE_BUSY_MS = 30_000


def make_engine(url: str) -> Engine:
    """An Engine for ``url``; SQLite gets its folder created, foreign keys on and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.close()


def is_postgres(engine: Engine) -> bool:
    """True when the catalog is PostgreSQL."""
    return engine.dialect.name == "postgresql"
