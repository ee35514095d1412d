"""The nightly harvest and the backfill: the business process, step by step.

discover GSPS -> retrieve them -> parse -> retrieve the referenced CT series -> segment -> write
SEG (-> optional C-STORE back) -> catalog -> run summary. Each series is segmented as soon as it
arrived, while the next ones are still being retrieved, in worker processes (several series at
once, and off this process, where pynetdicom receives the transfers).

The catalog is the source of truth: a GSPS already catalogued is skipped, a failure is recorded
with its stage and retried by the next run (and marked resolved when the retry works). Every write
is idempotent, so a run killed at any point is finished by running the same window again.

Example
-------
>>> nightly_harvest(dt.date(2026, 1, 5), dt.date(2026, 1, 6), options)  # doctest: +SKIP
>>> backfill(dt.date(2025, 1, 1), dt.date(2025, 12, 31), chunk_days=7)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy import Engine

from db import Recorder
from db.queries import (
    completed_windows,
    open_failure_uids,
    recorded_presentation_states,
    series_state,
)
from db.records import FailureRecord, HarvestRunRecord, RunStatus, Stage
from dicom_io.checks import MESSAGE_LIMIT, described
from dicom_io.files import remove_stale_temps
from dicom_io.gsps import GspsTarget, read_target
from dicom_io.pacs import Discovery, IncompleteDiscoveryError, InstanceMatch
from dicom_io.printable import escape_logs, printable
from flows.artifacts import (
    Progress,
    RunSummary,
    publish_summary,
    review_command,
    run_cases,
    write_html_report,
)
from flows.options import HarvestOptions, resolve_window, window_bounds
from flows.review.cases import Case
from flows.segment_flow import segment_one
from flows.segment_jobs import (
    SegmentWorkers,
    SeriesJob,
    SeriesOutcome,
    catalog_engine,
    default_workers,
    prepare_workers,
)
from flows.settings import Settings
from flows.tasks import (
    PacsSlots,
    discover,
    ensure_pacs_limits,
    pacs_slots,
    retrieve_gsps,
    retrieve_series,
    storage_scp,
    store_back,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that fail one object but not the run (recorded in the catalog, retried next run):
#: any, whatever a hostile object or an unlucky PACS makes a library raise.
ITEM_ERRORS = (Exception,)


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id


class _Run:
    """One window's bookkeeping: the catalog's run row, failures, the summary and progress."""

    def __init__(self, opts: HarvestOptions, start: dt.date, end: dt.date) -> None:
        self.opts = opts
        escape_logs()  # on a Prefect worker too: control characters in our log lines escaped
        self.engine: Engine = catalog_engine(opts.catalog)
        remove_stale_temps(opts.output_dir)  # what a killed run's writers left
        self.recorder = Recorder(self.engine)
        lo, hi = window_bounds(start, end)
        # Runs are keyed by the PACS's AE title: its host or port may move, it stays the same PACS.
        self.record = HarvestRunRecord(opts.pacs_aet, lo, hi, flow_run_id=_flow_run_id())
        self.run_id = self.recorder.record_run(self.record)
        self.summary = RunSummary(str(start), str(end), opts.pacs_aet)
        self.progress = Progress()
        self.shared: dict[str, GspsTarget] = {}  # staged GSPS drawn on several series
        self.failed_series: dict[str, str] = {}  # series UID -> stage it failed at

    def fail(self, stage: Stage, uid: str, exc: BaseException, log: bool = True) -> None:
        """Record a failed object (no patient data: messages name UIDs and the PACS only);
        log it unless told not to (an error raised on, which its catcher reports)."""
        self.recorder.record_failure(FailureRecord(stage, uid, type(exc).__name__,
                                                   printable(exc, MESSAGE_LIMIT), self.run_id))
        self.summary.failed_by_stage[stage.value] += 1
        if log:
            logger.warning("%s failed for %s: %s", stage.value, uid, described(exc))

    def resolve(self, stage: Stage, uid: str) -> None:
        """The retry of a failed object worked."""
        self.recorder.resolve_failure(stage, uid)

    def outcome(self, stage: Stage, uid: str, future: PrefectFuture[T],
                reraise: bool = False) -> T | None:
        """The task's result, its earlier failure resolved; or None (``reraise``: the error),
        its failure recorded."""
        try:
            value = future.result()
        except ITEM_ERRORS as exc:
            self.fail(stage, uid, exc, log=not reraise)
            if reraise:
                raise
            return None
        self.resolve(stage, uid)
        return value

    def finish(self, status: RunStatus) -> None:
        """Write the run's final counts and status; publish the artifacts."""
        s = self.summary
        self.recorder.record_run(replace(
            self.record, status=status, found=s.found, retrieved=s.retrieved_series,
            segmented=s.segmented, failed=s.failed, finished_at=dt.datetime.now(dt.UTC)))
        cases, review = run_cases(s, self.engine), review_command(self.opts.catalog)
        publish_summary(s, cases=cases, review=review)
        self._write_report(cases, review)
        self.progress.set(100.0, f"{status.value}: {s.segmented} segmented, {s.failed} failed")

    def _write_report(self, cases: Sequence[Case], review: str) -> None:
        """The run's HTML report, ``reports/harvest-START-END.html`` in the output folder (the
        window's latest run); a report that cannot be written is a warning, not a failure."""
        s = self.summary
        path = self.opts.output_dir / "reports" / f"harvest-{s.window_start}-{s.window_end}.html"
        try:
            write_html_report(path, s, f"SAM2CT harvest {s.window_start} .. {s.window_end}",
                              cases, review)
        except OSError as exc:
            logger.warning("run report not written: %s", printable(exc, 300))
        else:
            s.report = str(path)
            logger.debug("run report: %s", path)


@flow(name="nightly-harvest", task_runner=ThreadPoolTaskRunner(max_workers=4))
def nightly_harvest(window_start: dt.date | None = None, window_end: dt.date | None = None,
                    options: HarvestOptions | None = None) -> dict:
    """Harvest the studies dated ``window_start..window_end`` (default: yesterday)."""
    opts = options or HarvestOptions.from_settings(Settings())
    start, end = resolve_window(window_start, window_end)
    return harvest_window(opts, start, end).to_json()


def harvest_window(opts: HarvestOptions, start: dt.date, end: dt.date) -> RunSummary:
    """Run every stage over one window inside the current flow; return its summary."""
    run = _Run(opts, start, end)
    ensure_pacs_limits(opts)
    status = RunStatus.FAILED
    try:
        _stages(run, start, end)
        # a discovery that did not add up is a recorded failure: the window is not done
        status = (RunStatus.INCOMPLETE if run.summary.failed_by_stage[Stage.DISCOVER]
                  else RunStatus.COMPLETED)
    finally:
        run.finish(status)
    return run.summary


@contextmanager
def _timed(run: _Run, stage: str) -> Iterator[None]:
    """Add the seconds the flow spends in this block to ``stage`` of the run summary."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        run.summary.seconds[stage] += time.perf_counter() - t0


def _stages(run: _Run, start: dt.date, end: dt.date) -> None:
    """The process; each CT series is segmented as soon as it arrived, while the next ones are
    being retrieved, and the PACS slots are held from the first query to the last retrieval.
    What takes a while to start (the segment workers' imports, the storage SCP) starts while
    the PACS answers the discovery."""
    opts, s = run.opts, run.summary
    if _worker_count(opts):
        prepare_workers()
    with pacs_slots(opts) as slots:
        found = discover.submit(opts, start, end)
        with storage_scp(opts):
            jobs = _gsps_stages(run, found, start, end)
            arrivals = _retrieve_series(run, jobs, slots)
            with segment_workers(opts, len(jobs)) as workers:
                for outcome in _segment(run, arrivals, len(jobs), workers):
                    _count(run, outcome)
    _hold_shared(run)
    if opts.store_back and s.seg_paths:
        _store(run)


def _gsps_stages(run: _Run, found: PrefectFuture[Discovery], start: dt.date,
                 end: dt.date) -> list[SeriesJob]:
    """The discovered GSPS not yet done, retrieved and parsed: one job per CT series."""
    with _timed(run, "retrieve"):
        todo = _discover(run, found, start, end)
        staged = _retrieve_gsps(run, todo)
    with _timed(run, "parse"):
        jobs = _jobs(run, staged)
    run.progress.set(30.0, f"{run.summary.retrieved_gsps} GSPS retrieved, {len(jobs)} series "
                     "referenced")
    return jobs


def _discover(run: _Run, discovery: PrefectFuture[Discovery], start: dt.date,
              end: dt.date) -> list[InstanceMatch]:
    """The window's GSPS not yet catalogued (or held back by a failed series); a discovery
    whose answers did not add up is the window's recorded failure (redone next time)."""
    s, window = run.summary, f"window {start}..{end}"
    # without the window's GSPS the run cannot go on
    found = run.outcome(Stage.DISCOVER, window, discovery, reraise=True)
    if not found.complete:
        run.fail(Stage.DISCOVER, window, IncompleteDiscoveryError("; ".join(found.shortfalls)))
    s.found = len(found.gsps)
    todo = to_harvest(run.engine, found.gsps)
    s.already_done = s.found - len(todo)
    run.progress.set(10.0, f"{s.found} GSPS found, {len(todo)} to do")
    return todo


def _retrieve_gsps(run: _Run, todo: list[InstanceMatch]) -> list[str]:
    """Retrieve the GSPS to do, one task per PR series; failures recorded, the rest go on."""
    groups: dict[tuple[str, str], list[InstanceMatch]] = defaultdict(list)
    for g in todo:
        groups[(g.study_instance_uid, g.series_instance_uid)].append(g)
    futures = {key: retrieve_gsps.submit(run.opts, items) for key, items in groups.items()}
    paths: list[str] = []
    for (_, series_uid), future in futures.items():
        paths.extend(run.outcome(Stage.RETRIEVE, series_uid, future) or [])
    run.summary.retrieved_gsps = len(paths)
    return paths


def _jobs(run: _Run, gsps_paths: list[str]) -> list[SeriesJob]:
    """One job per CT series drawn on, with its GSPS (parse failures recorded).

    A GSPS drawn on several series goes to each of their jobs with the list of those series,
    so each job segments the annotations on its own series and none is lost or done twice.
    """
    by_series: dict[tuple[str, str], list[str]] = defaultdict(list)
    shared: dict[str, list[str]] = {}
    for path in gsps_paths:
        try:
            target: GspsTarget = read_target(path)
        except ITEM_ERRORS as exc:
            run.fail(Stage.PARSE, path.rsplit("/", 1)[-1].removesuffix(".dcm"), exc)
            continue
        for series in target.series_instance_uids:
            by_series[(target.study_instance_uid, series)].append(path)
        if len(target.series_instance_uids) > 1:
            shared[path] = list(target.series_instance_uids)
            run.shared[path] = target
    return [SeriesJob(study_instance_uid=study, series_instance_uid=series, series_dir="",
                      gsps_files=sorted(files),
                      gsps_series={f: shared[f] for f in files if f in shared})
            for (study, series), files in sorted(by_series.items())]


def _retrieve_series(run: _Run, jobs: list[SeriesJob], slots: PacsSlots) -> Iterator[SeriesJob]:
    """Start retrieving every referenced CT series now, in parallel (within the PACS limit);
    the iterator yields each job, in order, once its series arrived."""
    futures = [(job, retrieve_series.submit(run.opts, job.study_instance_uid,
                                            job.series_instance_uid)) for job in jobs]
    return _as_arrived(run, futures, slots)


def _as_arrived(run: _Run, futures: list[tuple[SeriesJob, PrefectFuture[str]]],
                slots: PacsSlots) -> Iterator[SeriesJob]:
    """Each job with its staged folder, in order, as its series arrives. The seconds waited
    count as the retrieve stage; the slots are given back when the last series arrived,
    before it is segmented."""
    for n, (job, future) in enumerate(futures, start=1):
        with _timed(run, "retrieve"):
            folder = _arrived(run, job, future)
        if n == len(futures):
            slots.close()
        if folder is not None:
            yield job.model_copy(update={"series_dir": folder})


def _arrived(run: _Run, job: SeriesJob, future: PrefectFuture[str]) -> str | None:
    """The staged folder of one retrieved series, or None (its failure recorded)."""
    folder = run.outcome(Stage.RETRIEVE, job.series_instance_uid, future)
    if folder is None:
        run.failed_series[job.series_instance_uid] = Stage.RETRIEVE.value
        return None
    run.summary.retrieved_series += 1
    return folder


def _batches(jobs: list[SeriesJob], size: int) -> Iterator[list[SeriesJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i:i + size]


def _worker_count(opts: HarvestOptions) -> int:
    """Segment worker processes this run may use: none when a GPU pool segments."""
    if opts.segment_deployment:
        return 0
    return default_workers(opts.device) if opts.segment_workers is None else opts.segment_workers


@contextmanager
def segment_workers(opts: HarvestOptions, jobs: int) -> Iterator[SegmentWorkers | None]:
    """The worker processes that segment this run's ``jobs`` series (no more than there are
    series); None when segmenting runs on the GPU pool, in this process, or there is nothing."""
    size = min(_worker_count(opts), jobs)
    if size < 1:
        yield None
        return
    with SegmentWorkers(size, opts.model, opts.device, opts.catalog,
                        opts.job_limits()) as workers:
        yield workers


def _segment(run: _Run, ready: Iterator[SeriesJob], total: int,
             workers: SegmentWorkers | None) -> Iterator[SeriesOutcome]:
    """Segment each series as it arrives: on the segment workers, several at once; without
    them here in the flow, one at a time (the model loaded once); or, when a GPU pool is
    configured, in batches on its deployment."""
    opts = run.opts
    if opts.segment_deployment:
        yield from _segment_on_pool(run, list(ready))
        return
    params = {"catalog_url": opts.catalog, "output_dir": str(opts.output_dir),
              "model": opts.model, "device": opts.device, "run_id": run.run_id}
    outcomes = (_on_workers(run, ready, params, workers) if workers is not None
                else (segment_one(job, **params) for job in ready))
    for done, outcome in enumerate(outcomes, start=1):
        yield outcome
        if done % opts.batch_size == 0:
            _segmented(run, done, total)


def _on_workers(run: _Run, ready: Iterator[SeriesJob], params: dict,
                workers: SegmentWorkers) -> Iterator[SeriesOutcome]:
    """Submit a ``segment-series`` task as each series arrives, as many running as there are
    workers (on a task runner of their own: none waits behind a retrieval); yield outcomes in
    order, each as soon as it and those before it are done."""
    pending: deque[tuple[SeriesJob, PrefectFuture[SeriesOutcome]]] = deque()
    with ThreadPoolTaskRunner(max_workers=workers.size) as runner:
        for job in ready:
            pending.append((job, runner.submit(segment_one, {"job": job, **params,
                                                             "workers": workers})))
            while pending and pending[0][1].wrapped_future.done():
                yield from _outcome(run, *pending.popleft())
        while pending:
            yield from _outcome(run, *pending.popleft())


def _outcome(run: _Run, job: SeriesJob,
             future: PrefectFuture[SeriesOutcome]) -> Iterator[SeriesOutcome]:
    """The job's outcome; a worker process that died or was stuck is the series' recorded
    failure."""
    try:
        yield future.result()
    except ITEM_ERRORS as exc:
        run.fail(Stage.SEGMENT, job.series_instance_uid, exc)
        run.failed_series[job.series_instance_uid] = Stage.SEGMENT.value


def _segmented(run: _Run, done: int, total: int) -> None:
    run.progress.set(30.0 + 65.0 * done / max(1, total), f"{done}/{total} series segmented")


def _segment_on_pool(run: _Run, jobs: list[SeriesJob]) -> Iterator[SeriesOutcome]:
    """Segment in batches on the GPU pool's deployment, after every series arrived."""
    opts, done = run.opts, 0
    for batch in _batches(jobs, opts.batch_size):
        params = {"series": batch, "catalog_url": opts.catalog_url,
                  "output_dir": str(opts.output_dir), "model": opts.model,
                  "device": opts.device, "run_id": run.run_id}
        yield from _segment_remote(run, batch, params)
        done += len(batch)
        _segmented(run, done, len(jobs))


def _segment_remote(run: _Run, batch: list[SeriesJob], params: dict) -> list[SeriesOutcome]:
    """Run one batch on the segment deployment (GPU pool); read its outcomes from the catalog."""
    from prefect.deployments import run_deployment

    # the worker reads the catalog URL from its own SAM2CT_DATABASE_URL: no password in the API
    params = {**params, "series": [job.model_dump() for job in batch], "catalog_url": None}
    flow_run = run_deployment(run.opts.segment_deployment, parameters=params, timeout=None)
    state = flow_run.state
    if state is None or not state.is_completed():
        error = RuntimeError(f"segment deployment run {flow_run.id} ended "
                             f"{state.name if state else 'without a state'}")
        for job in batch:
            run.fail(Stage.SEGMENT, job.series_instance_uid, error)
            run.failed_series[job.series_instance_uid] = Stage.SEGMENT.value
        return []
    return [outcome_from_catalog(run.engine, job) for job in batch]


def outcome_from_catalog(engine: Engine, job: SeriesJob) -> SeriesOutcome:
    """What the catalog holds for one series: the source of truth when segmenting ran elsewhere."""
    state = series_state(engine, job.series_instance_uid)
    return SeriesOutcome(series_instance_uid=job.series_instance_uid, ok=state.ok,
                         failed=state.failed, failed_stage=state.failed_stage,
                         message=state.message, seg_paths=state.seg_paths,
                         preview_paths=state.preview_paths)


def _count(run: _Run, outcome: SeriesOutcome) -> None:
    s = run.summary
    if outcome.parse_failures:
        s.failed_by_stage["parse"] += outcome.parse_failures
    if outcome.failed_stage:
        s.failed_by_stage[outcome.failed_stage] += 1
        run.failed_series[outcome.series_instance_uid] = outcome.failed_stage
        return
    s.segmented += outcome.ok
    s.failed_segments += outcome.failed
    s.skipped_annotations += outcome.skipped
    s.seg_paths += outcome.seg_paths
    s.previews += outcome.preview_paths
    s.model_spans += outcome.model_spans
    s.warning = s.warning or outcome.warning
    for stage, seconds in outcome.seconds.items():
        s.seconds[stage] += seconds


#: Stage and error class of the failure that holds back a GSPS drawn on a failed series.
_HOLD = (Stage.SEGMENT, "SeriesFailed")


def _hold_shared(run: _Run) -> None:
    """A GSPS drawn on several series is catalogued once one of them is: when another of its
    series failed, keep an open failure on the GSPS so the next run redoes it (``held_back``);
    resolve it once every series worked."""
    for target in run.shared.values():
        failed = [s for s in target.series_instance_uids if s in run.failed_series]
        uid = target.gsps_sop_instance_uid
        if not failed:
            run.resolve(_HOLD[0], uid)
            continue
        stages = ", ".join(f"{s} at {run.failed_series[s]}" for s in failed)
        run.recorder.record_failure(FailureRecord(
            _HOLD[0], uid, _HOLD[1], f"series it is drawn on failed: {stages}; redone next run",
            run.run_id))


def to_harvest(engine: Engine, found: Sequence[InstanceMatch]) -> list[InstanceMatch]:
    """Which of these GSPS are not done: not catalogued, or held back by a failed series."""
    done = recorded_presentation_states(engine, [g.sop_instance_uid for g in found])
    done -= held_back(engine, done)
    return [g for g in found if g.sop_instance_uid not in done]


def held_back(engine: Engine, uids: set[str]) -> set[str]:
    """Which of these catalogued GSPS must be redone: one of their series failed."""
    return open_failure_uids(engine, _HOLD[0], _HOLD[1], uids)


def _store(run: _Run) -> None:
    try:
        store_back(run.opts, run.summary.seg_paths)
    except ITEM_ERRORS as exc:
        run.fail(Stage.STORE, f"window {run.summary.window_start}..{run.summary.window_end}", exc)


# --- backfill ---------------------------------------------------------------------------------

def windows(start: dt.date, end: dt.date, chunk_days: int) -> list[tuple[dt.date, dt.date]]:
    """Consecutive inclusive windows of ``chunk_days`` covering ``start..end``, in order."""
    if chunk_days < 1:
        raise ValueError(f"Invalid 'chunk_days' value {chunk_days} - must be at least 1")
    if end < start:
        raise ValueError(f"Invalid backfill range {start}..{end} - end before start")
    out = []
    while start <= end:
        last = min(end, start + dt.timedelta(days=chunk_days - 1))
        out.append((start, last))
        start = last + dt.timedelta(days=1)
    return out


@flow(name="backfill")
def backfill(start: dt.date, end: dt.date, chunk_days: int = 7,
             options: HarvestOptions | None = None) -> list[dict]:
    """Harvest ``start..end`` window by window, oldest first; completed windows are skipped.

    Each window is a ``nightly-harvest`` subflow under the same PACS limits, so stopping the
    backfill and starting it again resumes at the first window not completed cleanly.
    """
    opts = options or HarvestOptions.from_settings(Settings())
    done = completed_windows(catalog_engine(opts.catalog), opts.pacs_aet)
    results = []
    for lo, hi in windows(start, end, chunk_days):
        if window_bounds(lo, hi) in done:
            logger.info("window %s..%s already harvested; skipped", lo, hi)
            continue
        results.append(nightly_harvest(lo, hi, opts))
    return results
