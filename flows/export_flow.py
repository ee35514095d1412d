"""The ``export`` deployment: a catalog query exported as a training dataset (db.export).

The flow run fails when nothing was exported, when the folder holds another export (unless
``force``), or when any case failed (after the others are written and the result published).

Example
-------
>>> export_dataset(out="dataset", fmt="nnunet", kind="line", min_volume_ml=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from db import CatalogFilter, open_catalog
from db.export import ExportError, ExportFormat
from db.export import export_dataset as _export
from db.export.nnunet import DEFAULT_DATASET
from dicom_io.files import remove_stale_temps
from dicom_io.printable import escape_logs
from flows.settings import Settings


@task(name="export-cases", cache_policy=NO_CACHE)
def export_cases(catalog_url: str, out: str, fmt: ExportFormat, where: CatalogFilter,
                 deidentify: bool, split: list[float], seed: int, force: bool,
                 nnunet_dataset: str) -> dict:
    """Export the matching segmentations; resumable (finished cases are skipped)."""
    from pathlib import Path

    engine = open_catalog(catalog_url)
    try:
        report = _export(engine, Path(out), fmt, where, deidentify=deidentify,
                         split=tuple(split), seed=seed, progress=False, force=force,
                         nnunet_dataset=nnunet_dataset)
    finally:
        engine.dispose()
    return {"out": str(report.out), "cases": report.cases, "written": report.written,
            "skipped_done": report.skipped_done, **report.figures,
            "failed": len(report.failed), "first_failure": report.failed[:1]}


@flow(name="export-dataset")
def export_dataset(out: str, fmt: ExportFormat = ExportFormat.NIFTI, kind: str | None = None,
                   min_volume_ml: float | None = None, max_volume_ml: float | None = None,
                   since: dt.date | None = None, until: dt.date | None = None,
                   model: str | None = None, status: str | None = None,
                   body_part: str | None = None, review: list[str] | None = None,
                   flagged: bool | None = None, deidentify: bool = False,
                   split: list[float] | None = None, seed: int = 0, force: bool = False,
                   nnunet_dataset: str = DEFAULT_DATASET, catalog_url: str | None = None) -> dict:
    """Export a catalog query to ``out`` as ``fmt``; publish a small result table.

    ``review`` keeps the latest review scores named (e.g. ``["acceptable", "minor"]``, ``"none"``
    for never reviewed); ``flagged`` True keeps flagged segmentations, False those checked with
    no quality flag (as ``sam2ct export --review ... --flagged/--no-flags``).
    """
    escape_logs()  # Prefect configured logging: control characters in our log lines escaped
    remove_stale_temps(out)  # what a killed export's writers left
    url = catalog_url or Settings().catalog_url
    where = CatalogFilter(kind=kind, min_volume_ml=min_volume_ml, max_volume_ml=max_volume_ml,
                          since=since, until=until, model=model, status=status,
                          body_part=body_part, review=tuple(review) if review else None,
                          flagged=flagged)
    result = export_cases(url, out, ExportFormat(fmt), where, deidentify, split or [1.0], seed,
                          force, nnunet_dataset)
    first_failure = result.pop("first_failure")  # may name a path: kept out of the artifact
    create_table_artifact([result], key="export-result",
                          description=f"Export {ExportFormat(fmt).value}: "
                                      f"{ {k: v for k, v in asdict(where).items() if v} }")
    if result["failed"]:
        raise ExportError(f"{result['failed']} of {result['cases']} case(s) failed; first: "
                          f"{first_failure[0]}")
    return result
