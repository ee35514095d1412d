"""`sam2ct catalog query|stats`: researchers' queries over the catalog."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from dicom_io.files import write_atomic, write_text_atomic
from dicom_io.gsps.annotation import AnnotationKind
from flows.cli.bounds import bounded_float, bounded_int
from flows.cli.db import add_catalog_argument, open_cli_catalog
from flows.cli.terminal import (
    add_wide_argument,
    iso_date,
    one_of,
    print_table,
    refuse_binary_on_terminal,
    table_text,
)

#: Output formats; parquet is binary: to a file (``--out``) or a redirected stdout only.
FORMATS = ("table", "csv", "json", "parquet")
#: Annotation kinds that are segmented (text is never a prompt).
KINDS = tuple(k.value for k in AnnotationKind if k is not AnnotationKind.TEXT)
#: Segmentation statuses a row can have (db.records.SegStatus but ``skipped``: never a row).
STATUSES = ("ok", "failed", "needs-review")
#: The columns of ``catalog query`` a person reads first: they lead a terminal table.
QUERY_FIRST = ("segmentation_id", "study_date", "kind", "status", "flag_count", "review_score",
               "model_name", "volume_ml", "long_axis_mm", "short_axis_mm", "study_instance_uid",
               "series_instance_uid", "seg_path")
#: Rows a terminal table shows unless ``--limit`` or ``--all`` says otherwise (a catalog may hold
#: millions; files written as csv/json/parquet get every row).
TABLE_PAGE = 50
#: Bounds of ``--limit`` (rows) and of the volume filters (mL: a cubic metre is no lesion).
MAX_ROWS = 10**8
MAX_ML = 10**6


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The query filters shared by ``catalog query``, ``catalog stats`` and ``export``."""
    g = parser.add_argument_group("filters")
    g.add_argument("--kind", **one_of(KINDS), metavar="KIND",
                   help=f"annotation kind, any case: {', '.join(KINDS)}")
    g.add_argument("--min-volume", type=bounded_float(0, MAX_ML),
                   metavar="ML", help="smallest volume in mL")
    g.add_argument("--max-volume", type=bounded_float(0, MAX_ML),
                   metavar="ML", help="largest volume in mL")
    g.add_argument("--since", type=iso_date, metavar="DATE", help="study date from (YYYY-MM-DD)")
    g.add_argument("--until", type=iso_date, metavar="DATE",
                   help="study date until (YYYY-MM-DD)")
    g.add_argument("--model", metavar="NAME", help="model name")
    g.add_argument("--status", **one_of(STATUSES), metavar="STATUS",
                   help=f"status, any case: {', '.join(STATUSES)}")
    g.add_argument("--body-part", metavar="P", help="BodyPartExamined, e.g. CHEST")
    g.add_argument("--study", metavar="UID", help="one StudyInstanceUID")
    g.add_argument("--review", type=_review_scores, metavar="SCORES",
                   help="latest review score, a comma list of acceptable, minor, major, "
                        "unusable, none (never reviewed); e.g. acceptable,minor")
    flags = g.add_mutually_exclusive_group()
    flags.add_argument("--no-flags", dest="flagged", action="store_false", default=None,
                       help="only segmentations whose automatic quality checks raised no flag")
    flags.add_argument("--flagged", dest="flagged", action="store_true", default=None,
                       help="only segmentations with at least one quality flag")
    add_catalog_argument(parser)


def _review_scores(text: str) -> tuple[str, ...]:
    """``--review`` text -> checked scores (argparse reports a bad one in one line)."""
    from db.queries import review_scores

    try:
        return review_scores(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def filter_from_args(args: argparse.Namespace):
    """A db.queries.CatalogFilter from parsed filter arguments."""
    from db.queries import CatalogFilter

    return CatalogFilter(kind=args.kind, min_volume_ml=args.min_volume,
                         max_volume_ml=args.max_volume, since=args.since, until=args.until,
                         model=args.model, status=args.status, body_part=args.body_part,
                         study_instance_uid=args.study, review=args.review,
                         flagged=args.flagged)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``catalog`` sub-command with ``query`` and ``stats``."""
    parser = sub.add_parser("catalog", help="query the segmentation catalog")
    actions = parser.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    query = actions.add_parser("query", help="segmentations matching the filters")
    add_filter_arguments(query)
    size = query.add_mutually_exclusive_group()
    size.add_argument("--limit", type=bounded_int(1, MAX_ROWS),
                      help=f"at most this many rows (table format default: {TABLE_PAGE})")
    size.add_argument("--all", action="store_true", help="every matching row, also as a table")
    _add_output_arguments(query)
    query.set_defaults(func=run_query)
    st = actions.add_parser("stats", help="counts and volumes by kind, model and status")
    add_filter_arguments(st)
    _add_output_arguments(st)
    st.set_defaults(func=run_stats)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", **one_of(FORMATS), default="table",
                        help="output format (default: table, fitted to the terminal; parquet "
                             "only to a file)")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")
    add_wide_argument(parser)


def _check_output(args: argparse.Namespace) -> None:
    """Before any work: a binary format is not written to a terminal."""
    if args.format == "parquet" and args.out is None:
        refuse_binary_on_terminal(args.format)


def run_query(args: argparse.Namespace) -> int:
    """Print the matching segmentations in the chosen format."""
    from db import query_frame

    _check_output(args)
    limit = _row_limit(args)
    engine = open_cli_catalog(args.catalog, create=False)  # never creates one
    try:
        frame = query_frame(engine, filter_from_args(args), None if limit is None else limit + 1)
    finally:
        engine.dispose()
    if limit is not None and len(frame) > limit:
        frame = frame.iloc[:limit]
        if args.limit is None:
            print(f"first {limit} rows shown; --limit N or --all for more", file=sys.stderr)
    _emit(frame, args.format, args.out, wide=args.wide, first=QUERY_FIRST)
    return 0


def _row_limit(args: argparse.Namespace) -> int | None:
    """Rows to show: ``--limit``, else a page for a terminal table, else all."""
    if args.limit is not None:
        return args.limit
    return TABLE_PAGE if args.format == "table" and args.out is None and not args.all else None


def run_stats(args: argparse.Namespace) -> int:
    """Print counts per (kind, model, status), the acceptability rate per model and version
    (table and JSON formats), table totals and open failures by stage."""
    from db import stats
    from db.queries import acceptability, failures_by_stage, table_counts

    _check_output(args)
    engine = open_cli_catalog(args.catalog, create=False)  # never creates one
    try:
        where = filter_from_args(args)
        frame, reviewed = stats(engine, where), acceptability(engine, where)
        counts, failures = table_counts(engine), failures_by_stage(engine)
    finally:
        engine.dispose()
    if args.format == "json":
        document = {"groups": json.loads(frame.to_json(orient="records")),
                    "acceptability": json.loads(reviewed.to_json(orient="records")),
                    "tables": counts, "open_failures_by_stage": failures}
        _write_text(json.dumps(document, indent=2) + "\n", args.out)
        return 0
    _emit(frame, args.format, args.out, wide=args.wide)
    if args.format == "table" and args.out is None:
        print("\nreviews and quality flags per model (acceptability: (acceptable + minor) / "
              "reviewed)")
        _emit(reviewed, "table", None, wide=args.wide)
    if args.format == "table":
        print("tables: " + ", ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stderr)
        print("open failures: " + (", ".join(f"{k}={v}" for k, v in failures.items()) or "none"),
              file=sys.stderr)
    return 0


def _emit(frame, fmt: str, out: Path | None, *, wide: bool = False,
          first: tuple[str, ...] = ()) -> None:
    """Write a DataFrame as table, CSV, JSON (one document) or Parquet. A table on stdout is
    fitted to the terminal unless ``wide``; in a file it is whole."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        if out is None:
            sys.stdout.buffer.write(buffer.getvalue())
        else:
            write_atomic(out, buffer.getvalue())
        return
    if fmt == "csv":
        text = frame.to_csv(index=False)
    elif fmt == "json":
        text = frame.to_json(orient="records", date_format="iso", indent=2) + "\n"
    elif out is None:
        print_table(frame, wide=wide, first=first)
        return
    else:
        text = table_text(frame, wide=True)[0] + "\n"
    _write_text(text, out)


def _write_text(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out, text)
