"""The ``segment`` deployment: segment batches of retrieved series and catalog the results.

Runs on the GPU work pool (called with ``run_deployment`` by the harvest). Without a pool the
harvest calls :func:`segment_one` itself, in its own flow, as each series arrives (a subflow
would cost a flow run's start and end for nothing). The model is loaded once per process and
reused by every series; each series is one task that loads its volume from disk, so no array
ever crosses a task boundary.

Example
-------
>>> segment_batch([SeriesJob(study_instance_uid="1.2", series_instance_uid="1.2.3",
...                          series_dir="staging/1.2/1.2.3", gsps_files=["pr.dcm"])],
...               catalog_url="sqlite:///c.sqlite", output_dir="seg")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from db import Recorder, open_catalog
from db.records import FailureRecord, Stage
from dicom_io.errors import DicomInputError
from dicom_io.volume import load_series
from flows.pipeline import ParsedGsps, algorithm_of, parse_gsps, segment_gsps
from flows.recording import build_series_results
from sam2ct.registry import Choice, choose_segmenter

logger = logging.getLogger(__name__)


class SeriesJob(BaseModel):
    """One CT series on disk and the GSPS files drawn on it."""

    study_instance_uid: str
    series_instance_uid: str
    series_dir: str
    gsps_files: list[str] = Field(min_length=1)
    #: GSPS file -> every series it is drawn on (first first), for GSPS drawn on several: this
    #: job takes only the annotations on its own series (and, if first, those on none of them).
    gsps_series: dict[str, list[str]] = Field(default_factory=dict)

    def own_annotations(self, parsed: ParsedGsps, name: str) -> ParsedGsps:
        """``parsed`` with only the annotations this job segments (all, for a one-series GSPS)."""
        drawn = self.gsps_series.get(name)
        if not drawn:
            return parsed
        mine = self.series_instance_uid
        keep = tuple(a for a in parsed.annotations if a.referenced_series_instance_uid == mine
                     or (a.referenced_series_instance_uid not in drawn and drawn[0] == mine))
        return replace(parsed, annotations=keep)


class SeriesOutcome(BaseModel):
    """What segmenting one series gave: counts, the failed stage if any, seconds per stage."""

    series_instance_uid: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    parse_failures: int = 0
    failed_stage: str | None = None
    message: str | None = None
    seg_paths: list[str] = Field(default_factory=list)
    preview_paths: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)
    warning: str | None = None


@functools.cache
def catalog_engine(url: str) -> Engine:
    """One Engine (connection pool) per catalog URL and process, migrated on first use."""
    return open_catalog(url)


@functools.cache
def _segmenter(model: str, device: str | None) -> Choice:
    """The segmenter for (model, device), built once per process (a checkpoint loads once)."""
    return choose_segmenter(model, device=device)


def _fail(recorder: Recorder, outcome: SeriesOutcome, stage: Stage, uid: str, exc: Exception,
          run_id: int | None) -> SeriesOutcome:
    recorder.record_failure(FailureRecord(stage, uid, type(exc).__name__, str(exc), run_id))
    outcome.failed_stage, outcome.message = stage.value, f"{type(exc).__name__}: {exc}"
    logger.warning("series %s failed at %s: %s", outcome.series_instance_uid, stage.value, exc)
    return outcome


def _parse(job: SeriesJob, recorder: Recorder, run_id: int | None,
           outcome: SeriesOutcome) -> list[ParsedGsps]:
    """Read every GSPS; a broken one is recorded as a parse failure and left out."""
    parsed = []
    for name in job.gsps_files:
        path = Path(name)
        try:
            parsed.append(job.own_annotations(parse_gsps(path), name))
        except DicomInputError as exc:
            if job.gsps_series.get(name, [job.series_instance_uid])[0] != job.series_instance_uid:
                continue  # a GSPS shared with other series: its first series' job records it
            recorder.record_failure(FailureRecord(Stage.PARSE, path.stem, type(exc).__name__,
                                                  str(exc), run_id))
            outcome.parse_failures += 1
    return parsed


@contextmanager
def gpu_slot(device: str | None) -> Iterator[None]:
    """On a GPU, hold ``gpu:<host>`` (a global concurrency limit, when defined) while segmenting."""
    if device is None or not device.startswith("cuda"):
        yield
        return
    with concurrency(f"gpu:{socket.gethostname()}", occupy=1):
        yield


@task(name="segment-series", cache_policy=NO_CACHE)
def segment_one(job: SeriesJob, catalog_url: str, output_dir: str, model: str = "auto",
                device: str | None = None, run_id: int | None = None) -> SeriesOutcome:
    """Load one series, segment every usable annotation, write SEGs, record it all."""
    outcome = SeriesOutcome(series_instance_uid=job.series_instance_uid)
    recorder = Recorder(catalog_engine(catalog_url))
    clock = time.perf_counter
    t0 = clock()
    try:
        volume = load_series(Path(job.series_dir), job.series_instance_uid)
        parsed = _parse(job, recorder, run_id, outcome)
    except (DicomInputError, ValueError, OSError) as exc:
        return _fail(recorder, outcome, Stage.LOAD, job.series_instance_uid, exc, run_id)
    t1 = clock()
    choice = _segmenter(model, device)
    algorithm = algorithm_of(choice.segmenter, choice.warning)
    out = Path(output_dir) / job.study_instance_uid
    results = []
    try:
        with gpu_slot(device):
            for p in parsed:
                results.extend(segment_gsps(volume, p, choice.segmenter, algorithm, out))
    except (ValueError, RuntimeError, OSError) as exc:
        return _fail(recorder, outcome, Stage.SEGMENT, job.series_instance_uid, exc, run_id)
    t2 = clock()
    model_s = sum(r.seconds for r in results if r.status != "skipped")
    try:
        recorder.record_series_results(build_series_results(
            volume, Path(job.series_dir), parsed, results, algorithm))
    except (SQLAlchemyError, ValueError) as exc:  # recorded as a catalog failure; batch goes on
        return _fail(recorder, outcome, Stage.CATALOG, job.series_instance_uid, exc, run_id)
    for stage in (Stage.LOAD, Stage.SEGMENT, Stage.CATALOG):
        recorder.resolve_failure(stage, job.series_instance_uid)
    t3 = clock()
    outcome.seconds = {"parse": round(t1 - t0, 3), "segment": round(model_s, 3),
                       "seg_write": round(max(0.0, t2 - t1 - model_s), 3),
                       "catalog": round(t3 - t2, 3)}
    outcome.warning = choice.warning
    for r in results:
        if r.status == "ok":
            outcome.ok += 1
        elif r.status == "failed":
            outcome.failed += 1
        else:
            outcome.skipped += 1
    outcome.seg_paths = sorted({r.seg_path for r in results if r.seg_path})
    outcome.preview_paths = [r.preview_path for r in results if r.preview_path]
    return outcome


@flow(name="segment-batch")
def segment_batch(series: list[SeriesJob], catalog_url: SecretStr | str | None, output_dir: str,
                  model: str = "auto", device: str | None = None,
                  run_id: int | None = None) -> list[SeriesOutcome]:
    """Segment a batch of series one after another (one GPU, the model loaded once).

    ``catalog_url`` None: the worker's own settings (SAM2CT_DATABASE_URL) name the catalog; a
    SecretStr keeps a password out of Prefect's stored parameters.
    """
    if isinstance(catalog_url, SecretStr):
        catalog_url = catalog_url.get_secret_value()
    if catalog_url is None:
        from flows.settings import Settings

        catalog_url = Settings().catalog_url
    return [segment_one(job, catalog_url, output_dir, model, device, run_id) for job in series]
