"""Secrets kept with the catalog, never with what leaves it.

A key is made once per catalog and name, on first use, and read back ever after: exports of the
same catalog then map the same UID or case to the same pseudonym, and the key stays behind
when a dataset folder is shared.

Example
-------
>>> key = catalog_key(engine, EXPORT_KEY)  # doctest: +SKIP
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from db.engine import catalog_errors
from db.models import CatalogKey

#: the key that pseudonymises UIDs and case ids in exports
EXPORT_KEY = "export"
_KEY_BYTES = 32


def catalog_key(engine: Engine, name: str) -> str:
    """The catalog's secret called ``name`` (64 hex digits), made on first use.

    Two processes asking at once get the same key: the loser of the insert reads the winner's.

    Raises
    ------
    CatalogError
        The catalog cannot be read or written.
    """
    with catalog_errors(engine, f"reading key '{name}' failed"):
        key = _read(engine, name)
        if key is not None:
            return key
        try:
            with engine.begin() as connection:
                connection.execute(CatalogKey.__table__.insert().values(
                    name=name, value=secrets.token_hex(_KEY_BYTES)))
        except IntegrityError:
            pass  # made by another process in the meantime
        key = _read(engine, name)
    assert key is not None
    return key


def _read(engine: Engine, name: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            select(CatalogKey.value).where(CatalogKey.name == name)).scalar_one_or_none()
