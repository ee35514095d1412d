"""Segment jobs: one CT series on disk and its GSPS -> SEGs, previews and catalog rows.

What a job is (:class:`SeriesJob`), what it gave (:class:`SeriesOutcome`) and doing one
(:func:`run_job`), in this process or in worker processes (:class:`SegmentWorkers`). Plain
Python, no Prefect: the ``segment-series`` task wraps a job, and worker processes import this
module in well under the seconds Prefect takes. A job reads its volume from disk and writes its
results to disk and the catalog, so only UIDs, paths and counts cross a process boundary.

Example
-------
>>> job = SeriesJob(study_instance_uid="1.2", series_instance_uid="1.2.3",
...                 series_dir="staging/1.2/1.2.3", gsps_files=["pr.dcm"])
>>> with SegmentWorkers(2, "classical", None) as workers:  # doctest: +SKIP
...     outcome = workers.run(job, "sqlite:///c.sqlite", "seg")
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import Engine
from threadpoolctl import threadpool_limits

from db import Recorder, open_catalog
from db.records import FailureRecord, SegStatus, Stage
from dicom_io.checks import MESSAGE_LIMIT, described
from dicom_io.printable import printable
from dicom_io.processes import start_forkserver, worker_pool
from dicom_io.volume import load_series
from flows.limits import JobLimits, WorkerStuck, cap_memory
from flows.segment_series import ParsedGsps, SeriesRun, parse_gsps, segment_series
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
    #: (start, end) wall-clock times (time.time()) of each model call: when several workers
    #: segment at once, their union is the time the model ran
    model_spans: list[tuple[float, float]] = Field(default_factory=list)
    warning: str | None = None


@functools.cache
def catalog_engine(url: str) -> Engine:
    """One Engine (connection pool) per catalog URL and process, migrated on first use."""
    return open_catalog(url)


@functools.cache
def segmenter(model: str, device: str | None, threads: int | None = None) -> Choice:
    """The segmenter for (model, device), built once per process (a checkpoint loads once).

    ``threads``: this process's share of the cores, when several worker processes share them:
    BLAS / OpenMP (numpy, scipy) and torch would otherwise each start as many threads as there
    are cores in every worker. OpenBLAS's idle threads spin: on 2 cores, one classical
    segmenter with 2 BLAS threads took 40 % more CPU than with 1, and 20 % more wall time.
    """
    choice = choose_segmenter(model, device=device)  # loads what the model needs, then:
    if threads:
        threadpool_limits(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return choice


def _fail(recorder: Recorder, outcome: SeriesOutcome, stage: Stage, uid: str,
          exc: BaseException, run_id: int | None) -> SeriesOutcome:
    recorder.record_failure(FailureRecord(stage, uid, type(exc).__name__,
                                          printable(exc, MESSAGE_LIMIT), run_id))
    outcome.failed_stage, outcome.message = stage.value, described(exc)
    logger.warning("series %s failed at %s: %s", outcome.series_instance_uid, stage.value,
                   described(exc))
    return outcome


def _parse(job: SeriesJob, recorder: Recorder, run_id: int | None,
           outcome: SeriesOutcome) -> list[ParsedGsps]:
    """Read every GSPS; a broken one is recorded as a parse failure and left out."""
    parsed = []
    for name in job.gsps_files:
        path = Path(name)
        try:
            parsed.append(job.own_annotations(parse_gsps(path), name))
        except Exception as exc:  # noqa: BLE001 - one bad GSPS is its failure, never the series'
            if job.gsps_series.get(name, [job.series_instance_uid])[0] != job.series_instance_uid:
                continue  # a GSPS shared with other series: its first series' job records it
            recorder.record_failure(FailureRecord(Stage.PARSE, path.stem, type(exc).__name__,
                                                  printable(exc, MESSAGE_LIMIT), run_id))
            outcome.parse_failures += 1
    return parsed


def run_job(job: SeriesJob, catalog_url: str, output_dir: str, model: str = "auto",
            device: str | None = None, run_id: int | None = None,
            threads: int | None = None, limits: JobLimits | None = None) -> SeriesOutcome:
    """Load one series, segment it (``segment_series``), record it all in the catalog.

    A failure is recorded in the catalog with its stage and returned in the outcome; only an
    unusable model or catalog raises. ``limits``: loading and segmenting past
    ``limits.seconds`` is the series' failure (on the main thread; see :mod:`flows.limits`),
    and this process's address space is capped at ``limits.memory_mb``.
    """
    outcome = SeriesOutcome(series_instance_uid=job.series_instance_uid)
    recorder = Recorder(catalog_engine(catalog_url))
    if limits is not None:
        cap_memory(limits.memory_mb)
    clock = time.perf_counter
    t0 = clock()
    run, t1 = _load_and_segment(job, recorder, outcome, (model, device, threads), output_dir,
                                run_id)
    if run is None:
        return outcome
    t2 = clock()
    outcome.model_spans = run.model_spans
    model_s = sum(end - start for start, end in run.model_spans)
    try:
        recorder.record_series_results(run.catalog_records(Path(job.series_dir).resolve()))
    except Exception as exc:  # noqa: BLE001 - recorded as a catalog failure; the batch goes on
        return _fail(recorder, outcome, Stage.CATALOG, job.series_instance_uid, exc, run_id)
    for stage in (Stage.LOAD, Stage.SEGMENT, Stage.CATALOG):
        recorder.resolve_failure(stage, job.series_instance_uid)
    t3 = clock()
    outcome.seconds = {"parse": round(t1 - t0, 3), "segment": round(model_s, 3),
                       "seg_write": round(max(0.0, t2 - t1 - model_s), 3),
                       "catalog": round(t3 - t2, 3)}
    outcome.warning = run.warning
    _tally(outcome, run)
    return outcome


def _load_and_segment(job: SeriesJob, recorder: Recorder, outcome: SeriesOutcome,
                      segmenter_key: tuple[str, str | None, int | None], output_dir: str,
                      run_id: int | None) -> tuple[SeriesRun | None, float]:
    """The series segmented and the clock when it was loaded; None when a stage failed (its
    failure recorded in ``outcome`` and the catalog)."""
    try:
        volume = load_series(Path(job.series_dir), job.series_instance_uid)
        parsed = _parse(job, recorder, run_id, outcome)
    except Exception as exc:  # noqa: BLE001 - whatever the input, this series' recorded failure
        _fail(recorder, outcome, Stage.LOAD, job.series_instance_uid, exc, run_id)
        return None, 0.0
    loaded = time.perf_counter()
    choice = segmenter(*segmenter_key)
    try:
        return segment_series(volume, parsed, choice,
                              (Path(output_dir) / job.study_instance_uid).resolve()), loaded
    except Exception as exc:  # noqa: BLE001
        _fail(recorder, outcome, Stage.SEGMENT, job.series_instance_uid, exc, run_id)
        return None, loaded


def _tally(outcome: SeriesOutcome, run: SeriesRun) -> None:
    outcome.ok, outcome.failed = run.count(SegStatus.OK), run.count(SegStatus.FAILED)
    outcome.skipped = run.count(SegStatus.SKIPPED)
    rows = [r.segmentation for r in run.results if r.segmentation is not None]
    outcome.seg_paths = sorted({s.seg_path for s in rows if s.seg_path})
    outcome.preview_paths = [s.preview_path for s in rows if s.preview_path]


def default_workers(device: str | None) -> int:
    """Segment worker processes when none are configured: one per core (at most 4) on the
    CPU; one on a GPU (a second model on the same GPU would only take turns with the first)."""
    if device is not None and not device.startswith("cpu"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _warm(model: str, device: str | None, threads: int | None, catalog_url: str) -> int:
    """A worker's first job: build the segmenter and open the catalog before the first series."""
    segmenter(model, device, threads)
    catalog_engine(catalog_url)
    return os.getpid()


#: What the workers' forkserver imports once, so each worker starts with it loaded.
_PRELOAD = [__name__]


def prepare_workers() -> None:
    """Have the workers' imports (seconds: torch, highdicom, ...) done in the background now,
    while the flow still discovers and retrieves, so that :class:`SegmentWorkers` started later
    forks its workers in milliseconds."""
    start_forkserver(_PRELOAD)


class SegmentWorkers:
    """``size`` worker processes that run segment jobs, each loading the model once.

    Series segment side by side on several cores, and off the flow's process, where the PACS
    transfers run (pynetdicom's receive path is Python and needs the GIL). Started on entry:
    each worker builds the segmenter and opens the catalog at once, while the first series are
    still being retrieved.

    A worker that dies (killed, out of memory) takes its pool down: the jobs running then
    raise ``BrokenProcessPool`` (the series' failure), and a fresh pool takes the jobs after.
    """

    def __init__(self, size: int, model: str, device: str | None, catalog_url: str,
                 limits: JobLimits | None = None) -> None:
        if size < 1:
            raise ValueError(f"Invalid 'size' value '{size}' - must be >= 1")
        self.size, self.model, self.device = size, model, device
        self.threads = max(1, (os.cpu_count() or 1) // size)
        limits = limits or JobLimits()
        self.limits = limits.model_copy(
            update={"memory_mb": limits.worker_memory_mb(size, device)})
        self._catalog_url = catalog_url
        self._stack = ExitStack()
        self._executor: ProcessPoolExecutor | None = None
        self._renewing = threading.Lock()
        #: pools whose workers were killed for a job past its time limit
        self._stopped: set[ProcessPoolExecutor] = set()
        #: pools started after one broke (a count for the logs and tests)
        self.renewals = 0

    def __enter__(self) -> SegmentWorkers:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor = None
        self._stack.close()

    def _open(self) -> None:
        self._executor = self._stack.enter_context(worker_pool(
            self.size, preload=_PRELOAD, loggers=("", "flows", "dicom_io", "sam2ct", "db")))
        # one warm-up per worker: each submit while none is idle starts another process; a
        # failed warm-up is not read, the jobs then fail with the same error
        for _ in range(self.size):
            self._executor.submit(_warm, self.model, self.device, self.threads,
                                  self._catalog_url)

    def run(self, job: SeriesJob, catalog_url: str, output_dir: str,
            run_id: int | None = None) -> SeriesOutcome:
        """Run one job on a free worker; wait for its outcome.

        A job that has not ended within ``limits.seconds`` has the workers killed and replaced
        and raises :class:`~flows.limits.WorkerStuck`; the jobs that were running beside it
        are run again on the fresh workers (once). A job that was never started because the
        pool had broken before goes to the fresh pool.
        """
        args = (run_job, job, catalog_url, output_dir, self.model, self.device, run_id,
                self.threads, self.limits)
        for attempt in (1, 2):
            executor = self._current()
            try:
                future = executor.submit(*args)
            except BrokenProcessPool:
                executor = self._renew(executor)
                future = executor.submit(*args)
            try:
                return future.result(timeout=self.limits.seconds)
            except TimeoutError:
                self._stop_stuck(executor)
                raise WorkerStuck(f"series {job.series_instance_uid}: not done within its time "
                                  f"limit of {self.limits.seconds:g} s; worker processes "
                                  "replaced") from None
            except BrokenProcessPool:
                self._renew(executor)
                if attempt == 2 or executor not in self._stopped:
                    raise
                logger.info("series %s: its worker was replaced for another series' time "
                            "limit; running it again", job.series_instance_uid)
        raise AssertionError("unreachable")

    def _stop_stuck(self, executor: ProcessPoolExecutor) -> None:
        """Kill the pool's worker processes (which one is stuck cannot be told from outside;
        ``_processes`` is the executor's own table of them, Python 3.14 adds
        ``terminate_workers``) and start fresh ones."""
        self._stopped.add(executor)
        for process in list(getattr(executor, "_processes", {}).values()):
            logger.warning("killing segment worker process %s", process.pid)
            process.kill()
        self._renew(executor)

    def _current(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise RuntimeError("SegmentWorkers.run outside its 'with' block")
        return self._executor

    def _renew(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A fresh pool in place of ``broken`` (once, however many jobs saw it break)."""
        with self._renewing:
            if self._current() is broken:
                logger.warning("a segment worker died; starting %d fresh worker(s)", self.size)
                self._stack.close()
                self._stack = ExitStack()
                self._open()
                self.renewals += 1
            return self._current()


__all__ = ["SegmentWorkers", "SeriesJob", "SeriesOutcome", "catalog_engine", "default_workers",
           "prepare_workers", "run_job", "segmenter"]
