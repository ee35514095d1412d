"""The ``export`` deployment: a catalog query exported as a training dataset (db.export).

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
from db.export import ExportFormat
from db.export import export_dataset as _export
from dicom_io.files import remove_stale_temps
from dicom_io.printable import escape_logs
from flows.settings import Settings


@task(name="export-cases", cache_policy=NO_CACHE)
def export_cases(catalog_url: str, out: str, fmt: ExportFormat, where: CatalogFilter,
                 deidentify: bool, split: list[float], seed: int) -> dict:
    """Export the matching segmentations; resumable (finished cases are skipped)."""
    from pathlib import Path

    report = _export(open_catalog(catalog_url), Path(out), fmt, where, deidentify=deidentify,
                     split=tuple(split), seed=seed, progress=False)
    return {"out": str(report.out), "cases": report.cases, "written": report.written,
            "skipped_done": report.skipped_done, "failed": len(report.failed)}


@flow(name="export-dataset")
def export_dataset(out: str, fmt: ExportFormat = ExportFormat.NIFTI, kind: str | None = None,
                   min_volume_ml: float | None = None, max_volume_ml: float | None = None,
                   since: dt.date | None = None, until: dt.date | None = None,
                   model: str | None = None, status: str | None = None,
                   body_part: str | None = None, deidentify: bool = False,
                   split: list[float] | None = None, seed: int = 0,
                   catalog_url: str | None = None) -> dict:
    """Export a catalog query to ``out`` as ``fmt``; publish a small result table."""
    escape_logs()  # Prefect configured logging: control characters in our log lines escaped
    remove_stale_temps(out)  # what a killed export's writers left
    url = catalog_url or Settings().catalog_url
    where = CatalogFilter(kind=kind, min_volume_ml=min_volume_ml, max_volume_ml=max_volume_ml,
                          since=since, until=until, model=model, status=status,
                          body_part=body_part)
    result = export_cases(url, out, ExportFormat(fmt), where, deidentify, split or [1.0], seed)
    create_table_artifact([result], key="export-result",
                          description=f"Export {ExportFormat(fmt).value}: "
                                      f"{ {k: v for k, v in asdict(where).items() if v} }")
    return result
