"""Engines for the catalog: SQLite (embedded default) or PostgreSQL via psycopg 3.

A catalog is a URL, or the path of a SQLite file (``catalog.sqlite`` is
``sqlite:////abs/path/catalog.sqlite``). Every way a catalog cannot be opened (a URL that is not
one, a backend we do not support, a SQLite folder that is missing, cannot be made or written, a
database that refuses or is missing, a catalog that must exist and does not, bad connection
arguments) raises one ``CatalogError`` whose message names the URL with its password hidden; the
command line prints it as one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

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
    """``url`` parsed and checked to be a catalog we support; text without ``://`` is the path
    of a SQLite file (made absolute).

    Raises
    ------
    CatalogError
        Not a database URL, or a backend other than SQLite and PostgreSQL (psycopg).
    """
    if isinstance(url, str) and "://" not in url and url.strip():
        return URL.create("sqlite", database=str(Path(url).expanduser().absolute()))
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


def make_engine(url: str | URL, *, create: bool = True, make_folder: bool = True) -> Engine:
    """An Engine for the catalog at ``url`` (not yet connected).

    SQLite gets foreign keys on and a busy timeout; PostgreSQL a connect timeout unless the URL
    sets one.

    Parameters
    ----------
    url
        A catalog URL or the path of a SQLite file (``parse_catalog_url``).
    create
        Whether a SQLite file may be created; False: it must exist.
    make_folder
        Whether a missing folder of a SQLite file to be created is made (with its parents);
        False: it must exist.

    Raises
    ------
    CatalogError
        A bad URL (``parse_catalog_url``), a SQLite file that must exist and does not, a folder
        that is missing or cannot be made or written, or connection arguments the driver
        refuses.
    """
    parsed = parse_catalog_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            timeout = {} if "connect_timeout" in parsed.query else {
                "connect_timeout": _PG_CONNECT_TIMEOUT_S}
            return create_engine(parsed, pool_pre_ping=True, connect_args=timeout)
        if create:
            _sqlite_folder(parsed, make_folder)
        else:
            _sqlite_file(parsed)
        engine = create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})
    except (ArgumentError, TypeError, ValueError) as e:
        raise CatalogError(f"catalog {shown(parsed)} - bad connection arguments: "
                           f"{printable(e, _REASON_CHARS)}") from e
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _in_memory(url: URL) -> bool:
    return not url.database or url.database == ":memory:"


def _sqlite_file(url: URL) -> None:
    """A SQLite catalog that must exist: its file is there."""
    if _in_memory(url):
        return
    path = Path(url.database).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CatalogError(f"no catalog at {printable(path, _REASON_CHARS)}: the file {what} "
                           "(`sam2ct db upgrade` creates a catalog)")


def _sqlite_folder(url: URL, make: bool) -> None:
    """The folder of a SQLite file, made when ``make``; it must be writable (SQLite writes its
    journal there)."""
    if _in_memory(url):
        return
    folder = Path(url.database).expanduser().parent
    if not make and not folder.is_dir():
        raise CatalogError(f"catalog {shown(url)} - its folder "
                           f"{printable(folder, _REASON_CHARS)} does not exist; make it first "
                           "(sam2ct makes no folders for a catalog it is given)")
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
        hint = _hint(e, engine.url)
        raise CatalogError(f"catalog {shown(engine.url)} - {doing}: "
                           f"{_reason(e, engine.url)}{'; ' + hint if hint else ''}") from e


def _hint(error: SQLAlchemyError, url: URL) -> str:
    """What to check when PostgreSQL cannot be reached or refuses us (empty for SQLite and
    for errors of a connected database)."""
    if url.get_backend_name() != "postgresql" or not isinstance(error, OperationalError):
        return ""
    text = str(error.orig or error)
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    if re.search(r'database "[^"]*" does not exist', text):
        return (f"create the database {url.database} on {where} (createdb) or correct the "
                "URL (SAM2CT_DATABASE_URL or --catalog)")
    if re.search(r'role "[^"]*" does not exist|password authentication|pg_hba\.conf', text):
        return (f"check the user and password in the URL and that {where} lets this user in "
                "from this host (pg_hba.conf)")
    return (f"check the host and port in the URL, that PostgreSQL runs on {where} and accepts "
            "connections from this host (listen_addresses, pg_hba.conf, firewall)")


def _reason(error: SQLAlchemyError, url: URL) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if url.password:
        first = first.replace(str(url.password), "***")
    return printable(first, _REASON_CHARS)


def check_catalog(engine: Engine, must_exist: bool = False) -> None:
    """Connect once and read the schema: a refused or missing database, bad connection
    arguments or a file that is not SQLite fail here, before anything is written; with
    ``must_exist``, so does a database without the catalog's tables.

    Raises
    ------
    CatalogError
        Naming the URL (password hidden) and the driver's reason.
    """
    with catalog_errors(engine, "cannot be opened"), engine.connect() as connection:
        found = inspect(connection).has_table("alembic_version")
    if must_exist and not found:
        raise CatalogError(f"catalog {shown(engine.url)} - holds no catalog (no sam2ct "
                           "tables); `sam2ct db upgrade` creates them")


def is_postgres(engine: Engine) -> bool:
    """True when the catalog is PostgreSQL."""
    return engine.dialect.name == "postgresql"
