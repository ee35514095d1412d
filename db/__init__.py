"""The catalog: SQLAlchemy models, Alembic migrations, idempotent writes, queries, dataset export."""

from __future__ import annotations

from sqlalchemy import Engine

from db.engine import CatalogError, catalog_errors, check_catalog, make_engine
from db.migrate import upgrade
from db.queries import CatalogFilter, query_frame, query_rows, stats
from db.recorder import Recorder

__all__ = ["CatalogError", "CatalogFilter", "Recorder", "make_engine", "open_catalog",
           "query_frame", "query_rows", "stats", "upgrade"]


def open_catalog(url: str, migrate: bool = True) -> Engine:
    """An Engine on the catalog at ``url``, checked to open and migrated to the latest schema
    unless told not to.

    Raises
    ------
    CatalogError
        The catalog cannot be opened or migrated; the message names the URL, password hidden.
    """
    engine = make_engine(url)
    try:
        check_catalog(engine)
        if migrate:
            with catalog_errors(engine, "migration failed"):
                upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
