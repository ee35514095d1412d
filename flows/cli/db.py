"""`sam2ct db upgrade`: migrate the catalog to the latest schema."""

from __future__ import annotations

import argparse
import sys


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--catalog URL`` option (default: SAM2CT_DATABASE_URL, else the SQLite file)."""
    parser.add_argument("--catalog", metavar="URL", default=None,
                        help="catalog database URL (default: SAM2CT_DATABASE_URL or the SQLite "
                             "file in the data folder)")


def catalog_url(args: argparse.Namespace) -> str:
    """The catalog URL from ``--catalog``, else from the settings."""
    if args.catalog:
        return args.catalog
    from flows.settings import Settings

    return Settings().catalog_url


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``db`` sub-command."""
    parser = sub.add_parser("db", help="catalog database maintenance")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="migrate the catalog to the latest schema")
    add_catalog_argument(up)
    up.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    """Migrate, then say which revision the catalog is at (on stderr; stdout stays clean)."""
    from db import open_catalog
    from db.engine import shown
    from db.migrate import current_revision

    engine = open_catalog(catalog_url(args))  # a catalog that fails raises CatalogError: one line
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    print(f"catalog {shown(engine.url)} at revision {revision}", file=sys.stderr)
    return 0
