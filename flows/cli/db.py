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
    from sqlalchemy.exc import SQLAlchemyError

    from db.migrate import current_revision, upgrade
    from flows.cli import CommandError

    url = catalog_url(args)
    try:
        upgrade(url)
        revision = current_revision(url)
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise CommandError(f"catalog {_safe(url)}: migration failed: {reason}") from e
    print(f"catalog {_safe(url)} at revision {revision}", file=sys.stderr)
    return 0


def _safe(url: str) -> str:
    """The URL with any password hidden."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError as e:
        raise ValueError(f"Invalid catalog URL '{url}' - not an SQLAlchemy database URL") from e
