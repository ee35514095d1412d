"""Small typed Prefect tasks of the harvest. They pass UIDs and file paths, never arrays.

Network tasks retry with exponential back-off and jitter, and hold one slot of the PACS's global
concurrency limit (``pacs:<AET>``, strict) after passing its rate limit (``pacs-rate:<AET>``), so
every worker of every flow together keeps within what the PACS allows.

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
from dataclasses import dataclass
from pathlib import Path

import pydicom
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.tasks import exponential_backoff

from dicom_io.errors import DicomInputError
from dicom_io.gsps import drawn_series
from dicom_io.pacs import (
    InstanceMatch,
    PacsError,
    RetrieveMethod,
    StorageSCP,
    discover_gsps,
    retrieve,
    staged_path,
    store_files,
)
from flows.options import HarvestOptions

logger = logging.getLogger(__name__)


class SeriesNotFoundError(ValueError):
    """The PACS holds no instance of a series a GSPS references (not retried: it will not come)."""


def transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry network and PACS errors, not bad input."""
    return isinstance(state.data, (PacsError, OSError))


#: Retry policy of tasks that talk to the PACS: 3 retries, 2 s, 4 s, 8 s, each +-50 % at random,
#: only for network and PACS errors.
NETWORK = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
           "retry_jitter_factor": 0.5, "retry_condition_fn": transient,
           "cache_policy": NO_CACHE}


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


@contextmanager
def pacs_slot(options: HarvestOptions) -> Iterator[None]:
    """Hold one of the PACS's association slots (strict: the limit must exist) after its rate."""
    slots, rate = limit_names(options.pacs_aet)
    with ExitStack() as held:
        with _SLOT_REQUESTS:
            rate_limit(rate, strict=True)
            held.enter_context(concurrency(slots, occupy=1, strict=True,
                                           lease_duration=options.lease_seconds))
        yield


class _SharedScp:
    """One storage SCP per port and process, shared by concurrent C-MOVE retrievals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, list] = {}  # port -> [scp, users]

    @contextmanager
    def use(self, options: HarvestOptions) -> Iterator[StorageSCP | None]:
        if options.method is not RetrieveMethod.MOVE:
            yield None
            return
        port = options.store_port
        with self._lock:
            entry = self._open.get(port)
            if entry is None:
                scp = StorageSCP(options.local_ae(), options.staging_dir,
                                 extra_callers=[options.pacs_aet]).start()
                entry = self._open[port] = [scp, 0]
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    entry[0].stop()
                    del self._open[port]


_SCP = _SharedScp()


def storage_scp(options: HarvestOptions):
    """Context manager: the process's storage SCP for ``options`` (None for C-GET)."""
    return _SCP.use(options)


@task(name="discover-gsps", **NETWORK)
def discover(options: HarvestOptions, start: dt.date, end: dt.date) -> list[InstanceMatch]:
    """Every GSPS of the studies dated ``start..end`` (C-FIND study -> PR series -> instances)."""
    with pacs_slot(options):
        return discover_gsps(options.pacs_settings(), options.local_ae(), start, end)


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


@dataclass(frozen=True)
class GspsTarget:
    """Which study and CT series one staged GSPS is drawn on (the first series first)."""

    gsps_path: str
    gsps_sop_instance_uid: str
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]

    @property
    def series_instance_uid(self) -> str:
        """The first series drawn on (annotations on no drawn series belong to it)."""
        return self.series_instance_uids[0]


@task(name="parse-gsps", cache_policy=NO_CACHE)
def parse_target(gsps_path: str) -> GspsTarget:
    """Read the GSPS header: the CT series it is drawn on. Raises DicomInputError."""
    name = Path(gsps_path).name
    try:
        ds = pydicom.dcmread(gsps_path, stop_before_pixels=True)
        series = drawn_series(ds)
        target = GspsTarget(gsps_path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), series)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as e:
        raise DicomInputError(f"GSPS {name}: no referenced series ({type(e).__name__})") from e
    if not series:
        raise DicomInputError(f"GSPS {name}: no referenced series (Referenced Series Sequence "
                              "is empty)")
    return target


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
