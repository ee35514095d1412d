"""`sam2ct review`: the review page over the catalog, on loopback unless told otherwise."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import socket
import sys
import tempfile
from pathlib import Path

from dicom_io.printable import printable
from flows.cli.bounds import bounded_int
from flows.cli.db import add_catalog_argument, catalog_url
from flows.review import DEFAULT_HOST, DEFAULT_PORT


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``review`` sub-command."""
    p = sub.add_parser("review", help="score segmentations in a local web page")
    add_catalog_argument(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=bounded_int(1, 65535), default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--reviewer", default=None,
                   help="name recorded with each score (default: the login name)")
    p.add_argument("--show-identifiers", action="store_true",
                   help="show patient IDs and study / series UIDs on the page (off: none)")
    p.set_defaults(func=run)


def _reviewer(args: argparse.Namespace) -> str:
    from db.reviews import MAX_REVIEWER
    from flows.cli import CommandError

    if args.reviewer is not None:
        name = args.reviewer.strip()
    else:
        try:
            name = getpass.getuser()
        except (KeyError, OSError) as e:
            raise CommandError("no login name to record scores under: give --reviewer NAME") from e
    if not name or len(name) > MAX_REVIEWER or not name.isprintable():
        raise CommandError(f"--reviewer '{printable(name, MAX_REVIEWER)}' - a printable name "
                           f"of 1 to {MAX_REVIEWER} characters")
    return name


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or a CommandError saying why not."""
    from flows.cli import CommandError

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address[:2], family=family)
    except OSError as e:
        raise CommandError(f"cannot listen on {printable(host, 100)}:{port} - "
                           f"{printable(e.strerror or e, 200)}") from e


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    """Serve the review page until interrupted (Ctrl-C, SIGTERM); 0 then."""
    import uvicorn

    from db import open_catalog
    from flows.review import page_url
    from flows.review.app import create_app

    reviewer = _reviewer(args)
    engine = open_catalog(catalog_url(args))
    sock = _listen(args.host, args.port)
    hosts = (args.host,)
    if not _loopback(args.host):  # requests then name this machine as others know it
        hosts = ("*",)
        print(f"note: the review page listens on {printable(args.host, 100)}, reachable from "
              "other machines; nothing protects it but your network", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sam2ct-review-") as cache:
        app = create_app(engine, reviewer, Path(cache), show_identifiers=args.show_identifiers,
                         hosts=hosts)
        print(f"review page: {page_url(args.host, args.port)} (reviewer {reviewer}; Ctrl-C "
              "stops it)", file=sys.stderr)
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on: a normal end
            pass
        finally:
            sock.close()
            engine.dispose()
    return 0
