"""Engines for the catalog: SQLite (embedded default) or PostgreSQL via psycopg 3.

Every way a catalog cannot be opened (a URL that is not one, a backend we do not support, a
SQLite folder that cannot be made or written, a database that refuses or is missing, bad
connection arguments) raises one ``CatalogError`` whose message names the URL with its password
hidden; the command line prints it as one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dicom_io.printable import printable

# How long a SQLite writer waits for another process's lock before failing (ms).
_SQLITE_BUSY_MS = 30_000
# How long opening a PostgreSQL connection may take unless the URL says (s); libpq waits forever.
_PG_CONNECT_TIMEOUT_S = 10
#: the drivers we support, by URL scheme
SUPPORTED = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")
_EXPECTED = "sqlite:///PATH or postgresql+psycopg://USER@HOST[:PORT]/DATABASE"
# Longest reason quoted from a driver's error.
_REASON_CHARS = 300


class CatalogError(Exception):
    """The catalog cannot be opened or used; the message names the URL (password hidden) and
    says why."""


def parse_catalog_url(url: str | URL) -> URL:
    """``url`` parsed and checked to be a catalog we support.

    Raises
    ------
    CatalogError
        Not a database URL, or a backend other than SQLite and PostgreSQL (psycopg).
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise CatalogError(f"Invalid catalog URL '{_masked(str(url))}' - not a database URL; "
                           f"expected {_EXPECTED}") from e
    if parsed.drivername not in SUPPORTED:
        raise CatalogError(f"Invalid catalog URL '{shown(parsed)}' - backend "
                           f"'{printable(parsed.drivername, 40)}' is not supported; only SQLite "
                           f"and PostgreSQL (psycopg): {_EXPECTED}")
    return parsed


def shown(url: URL) -> str:
    """``url`` as it may be printed or logged: password hidden, control characters escaped."""
    return printable(url.render_as_string(hide_password=True), _REASON_CHARS)


def _masked(text: str) -> str:
    """An unparsable URL with whatever stands between ``//`` and the last ``@`` hidden."""
    return printable(re.sub(r"//.*@", "//***@", text), _REASON_CHARS)


def make_engine(url: str | URL) -> Engine:
    """An Engine for the catalog at ``url`` (not yet connected).

    SQLite gets its folder created, foreign keys on and a busy timeout; PostgreSQL a connect
    timeout unless the URL sets one.

    Raises
    ------
    CatalogError
        A bad URL (``parse_catalog_url``), a SQLite folder that cannot be made or written, or
        connection arguments the driver refuses.
    """
    parsed = parse_catalog_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            timeout = {} if "connect_timeout" in parsed.query else {
                "connect_timeout": _PG_CONNECT_TIMEOUT_S}
            return create_engine(parsed, pool_pre_ping=True, connect_args=timeout)
        _sqlite_folder(parsed)
        engine = create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})
    except (ArgumentError, TypeError, ValueError) as e:
        raise CatalogError(f"catalog {shown(parsed)} - bad connection arguments: "
                           f"{printable(e, _REASON_CHARS)}") from e
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_folder(url: URL) -> None:
    """Make the folder of a SQLite file; it must be writable (SQLite writes its journal there)."""
    if not url.database or url.database == ":memory:":
        return
    folder = Path(url.database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CatalogError(f"catalog {shown(url)} - its folder cannot be made: "
                           f"{printable(e.strerror or e)}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CatalogError(f"catalog {shown(url)} - its folder is not writable")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.close()


@contextmanager
def catalog_errors(engine: Engine, doing: str) -> Iterator[None]:
    """Turn the database errors of the block into a ``CatalogError`` saying what was being done
    (``doing``, e.g. "cannot be opened") and the driver's reason, first line only."""
    try:
        yield
    except SQLAlchemyError as e:
        raise CatalogError(f"catalog {shown(engine.url)} - {doing}: "
                           f"{_reason(e, engine.url)}") from e


def _reason(error: SQLAlchemyError, url: URL) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if url.password:
        first = first.replace(str(url.password), "***")
    return printable(first, _REASON_CHARS)


def check_catalog(engine: Engine) -> None:
    """Connect once and read the schema: a refused or missing database, bad connection
    arguments or a file that is not SQLite fail here, before anything is written.

    Raises
    ------
    CatalogError
        Naming the URL (password hidden) and the driver's reason.
    """
    with catalog_errors(engine, "cannot be opened"), engine.connect() as connection:
        inspect(connection).has_table("alembic_version")


def is_postgres(engine: Engine) -> bool:
    """True when the catalog is PostgreSQL."""
    return engine.dialect.name == "postgresql"
