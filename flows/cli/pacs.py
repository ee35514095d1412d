"""`sam2ct pacs echo|find|retrieve|store`: DICOM networking by hand.

The PACS is ``--pacs AET@host:port`` or ``SAM2CT_PACS``; our AE title and storage port come from
``SAM2CT_AE_TITLE`` / ``SAM2CT_STORE_PORT`` (or ``--ae-title`` / ``--store-port``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from pathlib import Path

from dicom_io.printable import printable
from flows.cli.bounds import bounded_float, bounded_int
from flows.cli.terminal import one_of, progress

_LEVELS = ("study", "series", "image")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pacs`` and its four sub-commands."""
    parser = sub.add_parser("pacs", help="DICOM networking by hand: echo, find, retrieve, store")
    pacs_sub = parser.add_subparsers(dest="pacs_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pacs", help="the PACS as AET@host:port (default: SAM2CT_PACS)")
    common.add_argument("--ae-title", help="our AE title (default: SAM2CT_AE_TITLE or SAM2CT)")
    common.add_argument("--store-port", type=bounded_int(1, 65535),
                        help="our storage SCP port for C-MOVE "
                        "(default: SAM2CT_STORE_PORT or 11113)")
    common.add_argument("--timeout", type=bounded_float(0.1, 3600), default=None,
                        help="DIMSE and network timeout in seconds (default 60)")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")

    p = pacs_sub.add_parser("echo", parents=[common], help="C-ECHO the PACS")
    p.set_defaults(func=run_echo)

    p = pacs_sub.add_parser("find", parents=[common], help="C-FIND (Study Root)")
    p.add_argument("--level", **one_of(_LEVELS), default="study")
    p.add_argument("--date", help="StudyDate window YYYYMMDD-YYYYMMDD (split when the PACS "
                   "result limit is hit) or one day YYYYMMDD")
    p.add_argument("--modality", help="e.g. PR (ModalitiesInStudy at study level)")
    p.add_argument("keys", nargs="*", metavar="KEY=VALUE", help="extra matching/return keys")
    p.set_defaults(func=run_find)

    p = pacs_sub.add_parser("retrieve", parents=[common],
                            help="C-MOVE/C-GET a study or series into a folder, verified")
    p.add_argument("--study", required=True, help="StudyInstanceUID")
    p.add_argument("--series", help="SeriesInstanceUID (default: the whole study)")
    p.add_argument("--out", required=True, type=Path, help="staging folder")
    p.add_argument("--method", **one_of(("move", "get")), help="default: SAM2CT_PACS_METHOD")
    p.add_argument("--associations", type=bounded_int(1, 32), default=1, metavar="N",
                   help="split a large retrieval over N associations at once, in worker "
                        "processes (at most the PACS's association cap, 2)")
    p.set_defaults(func=run_retrieve)

    p = pacs_sub.add_parser("store", parents=[common], help="C-STORE files to the PACS")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(func=run_store)


def _endpoints(args: argparse.Namespace):
    """PacsSettings and LocalAE from flags over settings (plain values into dicom_io)."""
    from dicom_io.pacs import Backoff, LocalAE, PacsSettings, Timeouts
    from flows.cli import CommandError
    from flows.settings import Settings

    settings = Settings()
    address = args.pacs or settings.pacs
    if not address:
        raise CommandError("no PACS given: use --pacs AET@host:port or set SAM2CT_PACS")
    timeouts = Timeouts(dimse=args.timeout, network=args.timeout) if args.timeout else Timeouts()
    method = getattr(args, "method", None) or settings.pacs_method
    # by hand: fail fast rather than back off for minutes like a nightly harvest would
    pacs = PacsSettings.parse(address, method=method, timeouts=timeouts,
                              backoff=Backoff(attempts=2, base=0.5))
    local = LocalAE(args.ae_title or settings.ae_title, args.store_port or settings.store_port,
                    allowed_callers=tuple(settings.allowed_callers),
                    bind_address=settings.bind_address)
    return pacs, local


def _call(action):
    """Run ``action``; turn PACS errors into one-line command errors."""
    from dicom_io.pacs import PacsError
    from flows.cli import CommandError

    try:
        return action()
    except PacsError as e:
        raise CommandError(str(e)) from e


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else printable(text))


def run_echo(args: argparse.Namespace) -> int:
    """C-ECHO."""
    from dicom_io.pacs import echo

    pacs, local = _endpoints(args)
    _call(lambda: echo(pacs, local))
    _emit(args, {"pacs": pacs.address, "echo": "ok"}, f"C-ECHO {pacs.address}: ok")
    return 0


def _parse_keys(items: list[str]) -> dict[str, str]:
    keys = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"Invalid query key '{item}' - expected KEY=VALUE")
        keys[name.strip()] = value
    return keys


def _parse_window(text: str) -> tuple[dt.date, dt.date]:
    start, _, end = text.partition("-")
    try:
        first = dt.datetime.strptime(start, "%Y%m%d").date()
        last = dt.datetime.strptime(end or start, "%Y%m%d").date()
    except ValueError as e:
        raise ValueError(f"Invalid --date '{text}' - expected YYYYMMDD-YYYYMMDD") from e
    return first, last


def run_find(args: argparse.Namespace) -> int:
    """C-FIND at a level; with --date, over a window split at the PACS's result limit."""
    from dicom_io.pacs import QueryLevel, find, find_in_window
    from dicom_io.pacs.query import RETURN_KEYS

    pacs, local = _endpoints(args)
    level = QueryLevel(args.level.upper())
    keys = _parse_keys(args.keys)
    if args.modality:
        keys["ModalitiesInStudy" if level is QueryLevel.STUDY else "Modality"] = args.modality
    return_keys = [*RETURN_KEYS[level], *(k for k in keys if k not in RETURN_KEYS[level])]
    if args.date:
        start, end = _parse_window(args.date)
        matches = _call(lambda: find_in_window(pacs, local, level, start, end, keys, return_keys))
    else:
        matches = list(_call(lambda: find(pacs, local, level, keys, return_keys)).matches)
    rows = _unique_rows(matches, return_keys)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\t".join(return_keys))
        for row in rows:
            print("\t".join(printable(row.get(k, "")) for k in return_keys))  # PACS text
    return 0


def _unique_rows(matches, keywords: list[str]) -> list[dict[str, str]]:
    rows, seen = [], set()
    for ds in matches:
        row = {k: _text(ds.get(k)) for k in keywords}
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def run_retrieve(args: argparse.Namespace) -> int:
    """Retrieve with verification; fails when anything expected did not arrive."""
    from dicom_io.pacs import find_instances, retrieve
    from flows.cli import CommandError

    pacs, local = _endpoints(args)
    expected = _call(lambda: find_instances(pacs, local, args.study, args.series))
    if not expected:
        raise CommandError(f"PACS {pacs.address} has no instances for study {args.study}"
                           + (f" series {args.series}" if args.series else ""))
    with progress(f"C-{pacs.method.value.upper()}", total=len(expected), unit="inst") as bar:
        report = _call(lambda: retrieve(pacs, local, args.out, args.study, args.series,
                                        expected=expected, on_delivery=lambda d: bar.update(),
                                        associations=args.associations))
    data = dataclasses.asdict(report)
    data["method"] = report.method.value
    data["missing"] = list(report.missing)
    _emit(args, data, f"{report.received} received, {report.already_present} already staged, "
          f"{len(report.missing)} missing, {report.duplicates} duplicates, {report.failed} failed"
          f" -> {args.out}")
    _call(report.raise_if_incomplete)
    return 0


def run_store(args: argparse.Namespace) -> int:
    """C-STORE files; fails if any file was refused."""
    from dicom_io.pacs import store_files
    from flows.cli import CommandError

    pacs, local = _endpoints(args)
    for path in args.files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    with progress("C-STORE", total=len(args.files), unit="file") as bar:
        report = _call(lambda: store_files(pacs, local, args.files,
                                           on_progress=lambda p: bar.update()))
    _emit(args, dataclasses.asdict(report),
          f"{report.stored} stored ({report.warnings} with warnings), {len(report.failed)} failed")
    if report.failed:
        path, reason = next(iter(report.failed.items()))
        raise CommandError(f"{len(report.failed)} file(s) refused, first {path}: {reason}")
    return 0
