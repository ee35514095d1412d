"""The catalog: SQLAlchemy models, Alembic migrations, idempotent writes, queries, dataset export."""

from __future__ import annotations

from sqlalchemy import Engine

from db.engine import make_engine
from db.migrate import upgrade
from db.queries import CatalogFilter, query_frame, query_rows, stats
from db.recorder import Recorder

__all__ = ["CatalogFilter", "Recorder", "make_engine", "open_catalog", "query_frame", "query_rows",
           "stats", "upgrade"]


def open_catalog(url: str, migrate: bool = True) -> Engine:
    """An Engine on the catalog at ``url``, migrated to the latest schema unless told not to."""
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return engine
