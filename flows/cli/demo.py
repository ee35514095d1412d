"""`sam2ct demo`: the whole harvest on synthetic studies, with nothing configured.

synthetic studies -> an embedded PACS (Orthanc when installed, else pynetdicom's qrscp) -> the
nightly flow on Prefect's local mode -> SEGs, a SQLite catalog and an HTML report, all under
``--workdir``. Running it again on the same folder adds no catalog row and no file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dicom_io.files import write_text_atomic
from dicom_io.printable import printable
from flows.cli.bounds import SEED_MAX, bounded_int
from flows.cli.terminal import (
    add_progress_argument,
    follow_flow,
    one_of,
    progress,
    shows_progress,
    step,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="run the whole harvest on synthetic studies (no set-up)")
    p.add_argument("--workdir", type=Path, default=Path("demo-out"),
                   help="everything the demo writes goes under this folder")
    p.add_argument("--studies", type=bounded_int(1, 100), default=2)
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX), default=1)
    p.add_argument("--size", type=bounded_int(64, 1024),
                   default=512, help="pixels per CT row (64..1024)")
    p.add_argument("--model", default="auto", help="auto | classical | PATH.pt")
    p.add_argument("--pacs", **one_of(["auto", "orthanc", "pynetdicom-qrscp"]), default="auto",
                   help="embedded PACS (auto: Orthanc when installed)")
    add_progress_argument(p)
    p.set_defaults(func=run)


def _local_prefect(workdir: Path) -> None:
    """Prefect's local mode with its home under the workdir (before Prefect is imported)."""
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # the local server starts in ~10 s on an idle laptop, much slower on busy shared cores
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _studies(workdir: Path, args: argparse.Namespace, show: bool) -> tuple[Path, dict]:
    from dicom_io.synth import make_studies

    manifest_path = workdir / "studies" / "manifest.json"
    if not manifest_path.exists():
        with step(f"synthetic studies ({args.studies})", show):
            make_studies(manifest_path.parent, studies=args.studies, seed=args.seed,
                         size=args.size)
    return manifest_path.parent, json.loads(manifest_path.read_text())


def _load(pacs, root: Path, manifest: dict, local, show: bool) -> None:
    """C-STORE the studies into the embedded PACS once (a marker file remembers it)."""
    from dicom_io.pacs import PacsSettings, store_files
    from flows.cli import CommandError

    marker = pacs.folder / "loaded.json"
    if marker.exists():
        return
    files = sorted(root.glob("study-*/ct/*.dcm")) + [root / g["file"] for s in manifest["studies"]
                                                     for g in s["gsps"]]
    with progress("loading the embedded PACS", total=len(files), unit="file", show=show) as bar:
        report = store_files(PacsSettings.parse(pacs.address), local, files,
                             on_progress=lambda path: bar.update())
    if not report.ok:
        raise CommandError(f"embedded PACS refused {len(report.failed)} of {len(files)} files")
    write_text_atomic(marker, json.dumps({"files": len(files)}))


def run(args: argparse.Namespace) -> int:
    """synth -> embedded PACS -> nightly flow -> SEGs + catalog + report; print where it all is."""
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _local_prefect(workdir)
    from db import open_catalog
    from flows.cli.harvest import quiet_libraries
    from flows.demo_pacs import PacsKind, free_port, start_embedded_pacs
    from flows.options import HarvestOptions

    quiet_libraries()
    show = shows_progress(args)
    root, manifest = _studies(workdir, args, show)
    dates = sorted(s["study_date"] for s in manifest["studies"])
    opts = HarvestOptions(pacs="DEMOPACS@127.0.0.1:104", ae_title="SAM2CT",
                          store_port=free_port(),
                          catalog_url=f"sqlite:///{workdir / 'catalog.sqlite'}",
                          staging_dir=workdir / "staging", output_dir=workdir / "seg",
                          model=args.model)
    kind = None if args.pacs == "auto" else PacsKind(args.pacs)
    with start_embedded_pacs(workdir / "pacs", opts.ae_title, opts.store_port, kind) as pacs:
        opts = opts.model_copy(update={"pacs": pacs.address})
        _load(pacs, root, manifest, opts.local_ae(), show)
        with follow_flow("harvest", show):
            summary = _harvest(opts, dates)
    engine = open_catalog(opts.catalog)
    report = _report(workdir, engine, summary)
    _print(workdir, pacs, summary, engine, report)
    return 1 if summary["failed"] else 0


def _harvest(opts, dates: list[str]) -> dict:
    import datetime as dt

    from flows.harvest import nightly_harvest

    start, end = (dt.datetime.strptime(d, "%Y%m%d").date() for d in (dates[0], dates[-1]))
    return nightly_harvest(start, end, opts)


def _report(workdir: Path, engine, summary: dict) -> Path:
    """The HTML report over everything catalogued (so a re-run still shows every preview)."""
    from collections import Counter

    from db import query_rows
    from db.records import SegStatus
    from flows.artifacts import RunSummary, report_cases, write_html_report

    rows = query_rows(engine)
    run = RunSummary(summary["window_start"], summary["window_end"], summary["pacs"],
                     found=summary["found"], already_done=summary["already_done"],
                     retrieved_gsps=summary["retrieved_gsps"],
                     retrieved_series=summary["retrieved_series"],
                     segmented=sum(1 for r in rows if r.status == SegStatus.OK),
                     failed_segments=sum(1 for r in rows if r.status == SegStatus.FAILED),
                     skipped_annotations=summary["skipped_annotations"],
                     failed_by_stage=Counter(summary["failed_by_stage"]),
                     previews=[r.preview_path for r in rows if r.preview_path],
                     warning=summary["warning"])
    return write_html_report(workdir / "report.html", run, "SAM2CT harvest demo",
                             report_cases(engine), _review_command(workdir))


def _review_command(workdir: Path) -> str:
    """The command that opens the review page over the demo's catalog."""
    from flows.artifacts import review_command

    return review_command(f"sqlite:///{workdir / 'catalog.sqlite'}")


def _print(workdir: Path, pacs, summary: dict, engine, report: Path) -> None:
    from db.queries import stats, table_counts
    from flows.review import page_url

    if summary["warning"]:
        print(f"WARNING: {printable(summary['warning'])}", file=sys.stderr)
    print(f"studies:   {workdir / 'studies'} (synthetic)")
    print(f"PACS:      {pacs.kind.value} (stopped), storage {pacs.folder}")
    print(f"staging:   {workdir / 'staging'}")
    print(f"SEGs:      {workdir / 'seg'}/<study>/*.dcm, previews in .../previews/")
    print(f"catalog:   {workdir / 'catalog.sqlite'}")
    print(f"report:    {report}")
    print(f"this run:  found {summary['found']} GSPS, already done {summary['already_done']}, "
          f"segmented {summary['segmented']}, failed {summary['failed']}")
    counts = table_counts(engine)
    print("catalog:   " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    frame = stats(engine)
    if not frame.empty:
        print(frame.to_string(index=False))
    print(f"review:    {_review_command(workdir)}   then open {page_url()}")
