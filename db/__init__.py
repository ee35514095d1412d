"""The catalog: SQLAlchemy models, Alembic migrations, idempotent writes, queries, dataset export."""

from __future__ import annotations

from sqlalchemy import Engine

from db.engine import CatalogError, catalog_errors, check_catalog, make_engine
from db.migrate import upgrade
from db.queries import CatalogFilter, query_frame, query_rows, stats
from db.recorder import Recorder

__all__ = ["CatalogError", "CatalogFilter", "Recorder", "make_engine", "open_catalog",
           "query_frame", "query_rows", "stats", "upgrade"]


def open_catalog(url: str, migrate: bool = True, *, create: bool = True,
                 make_folder: bool = True) -> Engine:
    """An Engine on the catalog at ``url`` (a URL or a SQLite file's path), checked to open and
    migrated to the latest schema unless told not to.

    ``create=False`` (a command that only reads): the catalog must exist, a SQLite file or a
    database holding the catalog's tables; nothing is created. ``make_folder=False``: a SQLite
    file to be created must have its folder already.

    Raises
    ------
    CatalogError
        The catalog cannot be opened or migrated, or must exist and does not; the message names
        the URL, password hidden.
    """
    engine = make_engine(url, create=create, make_folder=make_folder)
    try:
        check_catalog(engine, must_exist=not create)
        if migrate:
            with catalog_errors(engine, "migration failed"):
                upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
