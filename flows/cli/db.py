"""`sam2ct db upgrade`: migrate the catalog to the latest schema; the ``--catalog`` option and
how every command opens its catalog."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--catalog URL`` option (default: SAM2CT_DATABASE_URL, else the SQLite file)."""
    parser.add_argument("--catalog", metavar="URL", default=None,
                        help="catalog: a database URL or the path of a SQLite file (default: "
                             "SAM2CT_DATABASE_URL, else catalog.sqlite in the data folder)")


def catalog_url(args: argparse.Namespace) -> str:
    """The catalog URL (or SQLite path) from ``--catalog``, else from the settings."""
    return catalog_source(getattr(args, "catalog", None))[0]


def catalog_source(given: str | None) -> tuple[str, str | None]:
    """The catalog URL and where it came from, as a hint for an error line: ``given`` (a
    flag), else SAM2CT_DATABASE_URL, else the SQLite file in the data folder (hint None: the
    default, whose folder is ours to make). A SQLite file's path becomes an absolute URL."""
    from flows.settings import Settings

    settings = Settings() if not given else None
    if given:
        url, source = given, "--catalog"
    elif settings.database_url:
        url, source = settings.database_url, "SAM2CT_DATABASE_URL"
    else:
        return settings.catalog_url, None
    if "://" in url or not url.strip():
        return url, source
    from db.engine import parse_catalog_url

    return parse_catalog_url(url).render_as_string(hide_password=False), source


def open_cli_catalog(given: str | None, *, create: bool) -> Engine:
    """Open (and migrate) the catalog ``given`` (``--catalog``), else the settings' one.

    A command that only reads (``create=False``) never creates a catalog: one that is not
    there fails, naming where it looked. One that writes may create the SQLite file, in a
    folder that exists; only the default's folder (the data folder) is made.

    Raises
    ------
    CatalogError
        One line: the catalog, what is wrong, and where its location came from.
    """
    from db import CatalogError, open_catalog

    url, source = catalog_source(given)
    try:
        return open_catalog(url, create=create, make_folder=source is None)
    except CatalogError as e:
        origin = f"from {source}" if source else (
            "the default; choose one with --catalog or SAM2CT_DATABASE_URL")
        raise CatalogError(f"{e} [{origin}]") from e


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``db`` sub-command."""
    parser = sub.add_parser("db", help="catalog database maintenance")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="create the catalog or migrate it to the latest "
                                            "schema")
    add_catalog_argument(up)
    up.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    """Migrate, then say which revision the catalog is at (on stderr; stdout stays clean)."""
    from db.engine import shown
    from db.migrate import current_revision

    engine = open_cli_catalog(args.catalog, create=True)  # a failure: CatalogError, one line
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    print(f"catalog {shown(engine.url)} at revision {revision}", file=sys.stderr)
    return 0
