"""Small typed Prefect tasks of the harvest. They pass UIDs and file paths, never arrays.

Network tasks hold one slot of the PACS's global concurrency limit (``pacs:<AET>``, strict) after passing its rate limit (``pacs-rate:<AET>``), so
every worker of every flow together keeps within what the PACS allows. A flow that runs many of
them takes its slots once (:class:`PacsSlots`) and its tasks share them.

Example
-------
>>> ensure_pacs_limits(options)  # doctest: +SKIP
>>> found = discover(options, dt.date(2026, 1, 5), dt.date(2026, 1, 6))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency, rate_limit

from dicom_io.pacs import (
    Discovery,
    InstanceMatch,
    PacsError,
    RetrieveMethod,
    StorageSCP,
    discover_window,
    retrieve,
    staged_path,
    store_files,
)
from flows.options import HarvestOptions

logger = logging.getLogger(__name__)


class SeriesNotFoundError(ValueError):
    """The PACS holds no instance of a series a GSPS references (not retried: it will not come)."""


#: Options of the tasks that talk to the PACS. No Prefect retries: the one retry policy of PACS
#: work is ``dicom_io.pacs.association.retry_with_backoff`` with the PACS's ``Backoff``, which
#: retries each transient error once where it happens (opening an association, a busy or lost
#: one, a retrieval's missing instances) and never again above it; a task retrying too would
#: multiply the attempts (4 task runs x 4 associations: 70 s to fail on an unreachable PACS).
#: What outlasts it is the object's recorded failure, redone by the next run.
NETWORK = {"retries": 0, "cache_policy": NO_CACHE}


def limit_names(pacs_aet: str) -> tuple[str, str]:
    """Names of the PACS's global concurrency limit and of its rate limit."""
    return f"pacs:{pacs_aet}", f"pacs-rate:{pacs_aet}"


def ensure_pacs_limits(options: HarvestOptions) -> None:
    """Create or update the PACS's global concurrency and rate limits on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    slots, rate = limit_names(options.pacs_aet)
    wanted = {slots: (options.max_associations, None),
              rate: (max(1, round(options.rate_per_second)), options.rate_per_second)}
    with get_client(sync_client=True) as client:
        for name, (limit, decay) in wanted.items():
            try:
                current = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=limit, slot_decay_per_second=decay or 0.0))
                continue
            if current.limit != limit or (decay and current.slot_decay_per_second != decay):
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                    limit=limit, slot_decay_per_second=decay or 0.0))


#: One slot request to the Prefect server at a time from this process: a SQLite-backed server
#: (Prefect's default) answers simultaneous ones 503, and the client then backs off ~2 s.
_SLOT_REQUESTS = threading.Lock()


class PacsSlots:
    """``count`` of the PACS's association slots, held by this process for a while.

    One request to the Prefect server takes them all (and one rate-limit token) and one gives
    them back, instead of two per task: a SQLite-backed server (Prefect's default) often answers
    a slot request that meets its writes of task states 503 (SQLITE_BUSY), and the client then
    backs off ~2 s. While held, :func:`pacs_slot` hands them out here, so this process still
    opens at most ``count`` associations at once, and dicom_io's gate spaces their openings by
    the PACS's rate. ``count`` is at most ``max_associations``, the limit ``ensure_pacs_limits``
    sets.
    """

    def __init__(self, options: HarvestOptions, count: int) -> None:
        self.aet = options.pacs_aet
        self.count = max(1, min(count, options.max_associations))
        self._options = options
        self._local = threading.BoundedSemaphore(self.count)
        self._server = ExitStack()
        self.open = False

    def __enter__(self) -> PacsSlots:
        slots, rate = limit_names(self.aet)
        with _SLOT_REQUESTS:
            rate_limit(rate, strict=True)
            self._server.enter_context(concurrency(
                slots, occupy=self.count, strict=True,
                lease_duration=self._options.lease_seconds))
        with _HOLDS_LOCK:
            _HOLDS[self.aet] = self
            self.open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the slots back once the associations using them ended (idempotent)."""
        with _HOLDS_LOCK:
            if not self.open:
                return
            self.open = False
            if _HOLDS.get(self.aet) is self:
                del _HOLDS[self.aet]
        for _ in range(self.count):  # wait for the local holders
            self._local.acquire()
        try:
            self._server.close()
        finally:
            for _ in range(self.count):  # late comers see it closed and ask the server
                self._local.release()

    @contextmanager
    def one(self) -> Iterator[bool]:
        """One of the held slots; yields False once they were given back (ask the server)."""
        with self._local:
            yield self.open


_HOLDS: dict[str, PacsSlots] = {}  # PACS AE title -> the slots this process holds for it
_HOLDS_LOCK = threading.Lock()


def pacs_slots(options: HarvestOptions, count: int | None = None) -> PacsSlots:
    """Context manager: hold ``count`` (default: all) of the PACS's slots for a stage."""
    return PacsSlots(options, options.max_associations if count is None else count)


@contextmanager
def pacs_slot(options: HarvestOptions) -> Iterator[None]:
    """Hold one of the PACS's association slots (strict: the limit must exist) after its rate:
    one of those this process holds (:class:`PacsSlots`), else one asked of the server."""
    with _HOLDS_LOCK:
        held = _HOLDS.get(options.pacs_aet)
    if held is not None:
        with held.one() as ok:
            if ok:
                yield
                return
    slots, rate = limit_names(options.pacs_aet)
    with ExitStack() as stack:
        with _SLOT_REQUESTS:
            rate_limit(rate, strict=True)
            stack.enter_context(concurrency(slots, occupy=1, strict=True,
                                            lease_duration=options.lease_seconds))
        yield


class _SharedScp:
    """One storage SCP per port and process, shared by concurrent C-MOVE retrievals.

    The last user's exit stops it in the background (pynetdicom's server takes up to its 0.5 s
    poll interval to stop); the next start on that port waits for that stop first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, list] = {}  # port -> [scp, users]
        self._stopping: dict[int, threading.Thread] = {}

    @contextmanager
    def use(self, options: HarvestOptions) -> Iterator[StorageSCP | None]:
        if options.method is not RetrieveMethod.MOVE:
            yield None
            return
        port = options.store_port
        with self._lock:
            entry = self._open.get(port)
            if entry is None:
                stopping = self._stopping.pop(port, None)
                if stopping is not None:
                    stopping.join()
                scp = StorageSCP(options.local_ae(), options.staging_dir,
                                 extra_callers=[options.pacs_aet],
                                 pacs_host=options.pacs_settings().host).start()
                entry = self._open[port] = [scp, 0]
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._open[port]
                    stop = threading.Thread(target=entry[0].stop, name=f"scp-stop-{port}")
                    stop.start()
                    self._stopping[port] = stop


_SCP = _SharedScp()


def storage_scp(options: HarvestOptions):
    """Context manager: the process's storage SCP for ``options`` (None for C-GET)."""
    return _SCP.use(options)


@task(name="discover-gsps", **NETWORK)
def discover(options: HarvestOptions, start: dt.date, end: dt.date) -> Discovery:
    """Every GSPS of the studies dated ``start..end`` (C-FIND study -> series -> instances),
    checked: whether the PACS's answers added up."""
    with pacs_slot(options):
        return discover_window(options.pacs_settings(), options.local_ae(), start, end)


@task(name="retrieve-gsps", **NETWORK)
def retrieve_gsps(options: HarvestOptions, instances: list[InstanceMatch]) -> list[str]:
    """Retrieve the GSPS instances of one series into staging; return their staged paths."""
    first = instances[0]
    _retrieve(options, first.study_instance_uid, first.series_instance_uid, instances)
    return [str(staged_path(options.staging_dir, i.study_instance_uid, i.series_instance_uid,
                            i.sop_instance_uid)) for i in instances]


@task(name="retrieve-series", **NETWORK)
def retrieve_series(options: HarvestOptions, study_uid: str, series_uid: str) -> str:
    """Retrieve every instance of one CT series into staging; return the series folder."""
    _retrieve(options, study_uid, series_uid, None)
    return str(options.staging_dir / study_uid / series_uid)


def _retrieve(options: HarvestOptions, study_uid: str, series_uid: str,
              expected: list[InstanceMatch] | None) -> None:
    """Retrieve and verify against the C-FIND list (an empty list is a lasting failure)."""
    with storage_scp(options) as scp, pacs_slot(options):
        report = retrieve(options.pacs_settings(), options.local_ae(), options.staging_dir,
                          study_uid, series_uid, expected=expected, scp=scp)
    if report.expected == 0:
        raise SeriesNotFoundError(f"PACS {options.pacs_aet} holds no instance of series "
                                  f"{series_uid} (study {study_uid})")
    report.raise_if_incomplete()


@task(name="store-segs", **NETWORK)
def store_back(options: HarvestOptions, seg_paths: list[str]) -> int:
    """C-STORE our SEG files to the PACS; return how many it accepted. Raises if any failed."""
    with pacs_slot(options):
        report = store_files(options.pacs_settings(), options.local_ae(),
                             [Path(p) for p in seg_paths])
    if not report.ok:
        raise PacsError(f"PACS {options.pacs_aet}: {len(report.failed)} of {len(seg_paths)} "
                        "SEG(s) not stored")
    return report.stored
