"""Retrieval by C-MOVE (into our storage SCP) or C-GET, verified against the C-FIND instance list.

A retrieval counts only files that are on disk in the staging area: the PACS's sub-operation
counts are reported but never trusted alone ("success but nothing arrived" is a failure). Instances
already staged are skipped, so calling :func:`retrieve` again resumes with the missing ones only.

With ``associations`` > 1 each attempt is split into parts, one run of one series' instances
each, asked for with an IMAGE-level identifier listing their SOP Instance UIDs (PS3.4 Annex C
allows a list of UIDs in the unique key of the retrieve level), side by side on up to that many
associations (never more than the PACS's ``max_associations``), each in a worker process. C-GET
instances are stored by the workers; C-MOVE ones still arrive at our one storage SCP. See
:mod:`dicom_io.pacs.parallel` for why and how the cap holds.

Example
-------
>>> report = retrieve(pacs, local, staging, study_uid, series_uid)  # doctest: +SKIP
>>> report.raise_if_incomplete()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    MRImageStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_io.pacs.association import BUSY_STATUSES, Gate, build_context, gate_for, open_association
from dicom_io.pacs.errors import (
    MoveDestinationError,
    PacsError,
    PacsTimeoutError,
    RetrievalIncompleteError,
    worth_retrying,
)
from dicom_io.pacs.parallel import run_size, side_by_side, split, worker_pool
from dicom_io.pacs.query import InstanceMatch, QueryLevel, find_instances
from dicom_io.pacs.settings import LocalAE, PacsSettings, RetrieveMethod
from dicom_io.pacs.storage import Delivery, StagingWriter, StorageSCP, StoreOutcome, staged_path

logger = logging.getLogger(__name__)

_PENDING = frozenset({0xFF00, 0xFF01})
#: Storage classes offered for C-GET besides those the C-FIND reported.
DEFAULT_GET_CLASSES = (CTImageStorage, EnhancedCTImageStorage, MRImageStorage,
                       GrayscaleSoftcopyPresentationStateStorage, SegmentationStorage,
                       RTStructureSetStorage, SecondaryCaptureImageStorage)
GET_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1,
                         JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         DeflatedExplicitVRLittleEndian)
#: Fewest instances worth an association of their own in a split retrieval.
MIN_PART = 16


@dataclass
class SubOperations:
    """Sub-operation counts the PACS reported (summed over attempts)."""

    completed: int = 0
    failed: int = 0
    warning: int = 0

    def add(self, status: Dataset) -> None:
        """Add the counts of one final C-MOVE/C-GET response."""
        self.completed += int(status.get("NumberOfCompletedSuboperations", 0) or 0)
        self.failed += int(status.get("NumberOfFailedSuboperations", 0) or 0)
        self.warning += int(status.get("NumberOfWarningSuboperations", 0) or 0)

    def include(self, other: SubOperations) -> None:
        """Add the counts of another part of the same retrieval."""
        self.completed += other.completed
        self.failed += other.failed
        self.warning += other.warning


@dataclass
class RetrievalReport:
    """What one retrieval achieved, counted from the staging area, not from the PACS's word.

    ``received``: expected instances newly on disk; ``already_present``: staged before the call;
    ``missing``: expected SOP Instance UIDs still absent; ``duplicates``: deliveries of instances
    we already had; ``failed``: deliveries we could not store; ``unexpected``: deliveries of
    instances not in the expected list (also stored).
    """

    study_instance_uid: str
    series_instance_uid: str | None
    method: RetrieveMethod
    expected: int = 0
    received: int = 0
    already_present: int = 0
    missing: tuple[str, ...] = ()
    duplicates: int = 0
    failed: int = 0
    unexpected: int = 0
    suboperations: SubOperations = field(default_factory=SubOperations)
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the PACS listed instances and every one of them is in the staging area."""
        return self.expected > 0 and not self.missing

    def raise_if_incomplete(self) -> None:
        """Raise :class:`RetrievalIncompleteError` naming what is missing and the last error."""
        if self.expected == 0:
            raise RetrievalIncompleteError(
                f"retrieval of study {self.study_instance_uid}: the PACS lists no instances")
        if self.missing:
            last = f"; last error: {self.errors[-1]}" if self.errors else ""
            raise RetrievalIncompleteError(
                f"retrieval of study {self.study_instance_uid}: {len(self.missing)} of "
                f"{self.expected} instances missing after {self.attempts} attempt(s){last}")


def retrieve(pacs: PacsSettings, local: LocalAE, staging: Path, study_uid: str,
             series_uid: str | None = None, *, method: RetrieveMethod | None = None,
             expected: Sequence[InstanceMatch] | None = None, scp: StorageSCP | None = None,
             attempts: int = 3, on_delivery: Callable[[Delivery], None] | None = None,
             associations: int = 1) -> RetrievalReport:
    """Bring every instance of a study (or one series) into ``staging``; verify and retry.

    ``expected`` defaults to an image-level C-FIND. For C-MOVE, ``scp`` is a running
    :class:`StorageSCP` writing into ``staging``; without it one is started for the call on
    ``local.store_port`` accepting the PACS's AE title. Retries ask only for missing instances,
    after ``pacs.backoff``'s delays; an error not worth another attempt (a permanent one, or
    one whose association retries were spent: ``worth_retrying``) ends them.
    ``associations`` > 1 splits each attempt over that many associations at once, at most
    ``pacs.max_associations`` (``on_delivery`` then hears of a C-GET part's instances when the
    part ends).
    """
    method = RetrieveMethod(method or pacs.method)
    if isinstance(associations, bool) or not isinstance(associations, int) or associations < 1:
        raise ValueError(f"Invalid 'associations' value '{associations}' - must be an int >= 1")
    associations = min(associations, pacs.max_associations)
    staging = Path(staging)
    expected = list(expected) if expected is not None else find_instances(
        pacs, local, study_uid, series_uid)
    report = RetrievalReport(study_uid, series_uid, method, expected=len(expected))
    if not expected:
        report.errors.append(f"PACS {pacs.address} lists no instances for study {study_uid}"
                             + (f" series {series_uid}" if series_uid else ""))
        return report
    start = _present(staging, expected)
    report.already_present = len(start)
    with ExitStack() as stack:
        writer = _writer(stack, pacs, local, staging, method, scp, on_delivery)
        for n in range(1, attempts + 1):
            present = _present(staging, expected)
            missing = [i for i in expected if i.sop_instance_uid not in present]
            if not missing:
                break
            if n > 1:
                time.sleep(pacs.backoff.delay(n - 1))
            if associations > 1 and len(missing) >= 2 * MIN_PART:
                _attempt_in_parts(pacs, local, writer, report, expected, missing, associations)
            elif not _attempt(pacs, local, writer, report, expected, missing, whole=not present):
                break
    end = _present(staging, expected)
    report.received = len(end - start)
    report.missing = tuple(sorted(i.sop_instance_uid for i in expected
                                  if i.sop_instance_uid not in end))
    _log(report)
    return report


def _writer(stack: ExitStack, pacs: PacsSettings, local: LocalAE, staging: Path,
            method: RetrieveMethod, scp: StorageSCP | None,
            on_delivery: Callable[[Delivery], None] | None) -> StagingWriter:
    if method is RetrieveMethod.GET:
        return StagingWriter(staging, on_delivery)
    if scp is None:
        scp = stack.enter_context(StorageSCP(local, staging, extra_callers=[pacs.ae_title],
                                             on_delivery=on_delivery,
                                             network_timeout=pacs.timeouts.network,
                                             dimse_timeout=pacs.timeouts.dimse,
                                             pacs_host=pacs.host))
    if scp.writer.staging.resolve() != staging.resolve():
        raise ValueError(f"Invalid 'scp' - it writes to {scp.writer.staging}, not {staging}")
    return scp.writer


def _attempt(pacs: PacsSettings, local: LocalAE, writer: StagingWriter, report: RetrievalReport,
             expected: list[InstanceMatch], missing: list[InstanceMatch], whole: bool) -> bool:
    """One attempt; False when the error it ended with is not worth another attempt."""
    identifiers = ([_identifier(report.study_instance_uid, report.series_instance_uid)]
                   if whole else [_identifier(i.study_instance_uid, i.series_instance_uid,
                                              i.sop_instance_uid) for i in missing])
    final: list[PacsError] = []

    def request() -> None:
        try:
            if report.method is RetrieveMethod.MOVE:
                _move(pacs, local, identifiers, report)
            else:
                _get(pacs, local, writer, identifiers, report, _get_classes(expected))
        except PacsError as exc:
            report.errors.append(str(exc))
            logger.debug("retrieval attempt %d: %s", report.attempts, exc)
            if not worth_retrying(exc):
                final.append(exc)

    _counted(pacs, writer, report, expected, missing, request)
    return not final


def _counted(pacs: PacsSettings, writer: StagingWriter, report: RetrievalReport,
             expected: list[InstanceMatch], missing: list[InstanceMatch],
             request: Callable[[], None]) -> None:
    """Run one attempt's ``request`` and count what the writer saw arrive meanwhile."""
    report.attempts += 1
    errors_before = len(report.errors)
    with writer.watch(i.sop_instance_uid for i in expected) as tally:
        before = writer.counts.total()
        request()
        report.duplicates += tally.outcomes[StoreOutcome.DUPLICATE]
        report.failed += tally.outcomes[StoreOutcome.FAILED]
        report.unexpected += max(0, writer.counts.total() - before - tally.outcomes.total())
    if tally.outcomes[StoreOutcome.STORED] == 0 and len(report.errors) == errors_before:
        report.errors.append(f"PACS {pacs.address} reported success but none of the "
                             f"{len(missing)} requested instances arrived")


def _attempt_in_parts(pacs: PacsSettings, local: LocalAE, writer: StagingWriter,
                      report: RetrievalReport, expected: list[InstanceMatch],
                      missing: list[InstanceMatch], associations: int) -> None:
    """One attempt split into parts (runs of one series' missing instances), side by side.

    Each part's association runs in a worker process of a pool made for the attempt (from the
    warm forkserver: ~20 ms), so a worker that died takes no later attempt with it. C-GET
    instances are stored by the worker; C-MOVE ones by our storage SCP, here.
    """
    size = run_size(len(missing), associations, MIN_PART)
    by_series: dict[str, list[InstanceMatch]] = {}
    for i in missing:
        by_series.setdefault(i.series_instance_uid, []).append(i)
    parts = [_identifier(run[0].study_instance_uid, run[0].series_instance_uid,
                         [i.sop_instance_uid for i in run])
             for series in by_series.values() for run in split(series, size)]
    classes = _get_classes(expected)
    gate = gate_for(pacs)

    def one(workers: Executor, identifier: Dataset) -> RetrievalReport:
        with gate.slot():  # the worker's association counts against this process's cap
            try:
                deliveries, part = workers.submit(_part_in_worker, pacs, local, writer.staging,
                                                  identifier, report.method, classes).result()
            except BrokenExecutor as exc:
                part = _part_report(identifier, report.method)
                part.errors.append(f"worker process ended abruptly ({exc})")
                return part
        for delivery in deliveries:
            writer.record(delivery)
        return part

    def request() -> None:
        with worker_pool(associations) as workers:
            done = side_by_side(functools.partial(one, workers), parts, associations)
        for part in done:
            report.suboperations.include(part.suboperations)
            for error in part.errors:
                report.errors.append(error)
                logger.debug("retrieval attempt %d: %s", report.attempts, error)

    _counted(pacs, writer, report, expected, missing, request)


def _part_report(identifier: Dataset, method: RetrieveMethod) -> RetrievalReport:
    return RetrievalReport(identifier.StudyInstanceUID, identifier.SeriesInstanceUID, method)


def _part_in_worker(pacs: PacsSettings, local: LocalAE, staging: Path, identifier: Dataset,
                    method: RetrieveMethod, classes: list[str]
                    ) -> tuple[list[Delivery], RetrievalReport]:
    """One part, in a worker process: what it stored into ``staging`` (C-GET; C-MOVE instances
    go to our storage SCP) and the PACS's word. Its association goes through a private one-slot
    gate: the caller holds the slot of the cap.
    """
    deliveries: list[Delivery] = []
    part = _part_report(identifier, method)
    gate = Gate(1, pacs.max_rate)
    try:
        if method is RetrieveMethod.MOVE:
            _move(pacs, local, [identifier], part, gate=gate)
        else:
            _get(pacs, local, StagingWriter(staging, deliveries.append), [identifier], part,
                 classes, gate=gate)
    except PacsError as exc:
        part.errors.append(str(exc))
    return deliveries, part


def _identifier(study: str, series: str | None, sop: str | list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = (QueryLevel.IMAGE if sop else
                             QueryLevel.SERIES if series else QueryLevel.STUDY).value
    ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    if sop:
        ds.SOPInstanceUID = sop
    return ds


def _move(pacs: PacsSettings, local: LocalAE, identifiers: list[Dataset],
          report: RetrievalReport, gate: Gate | None = None) -> None:
    model = StudyRootQueryRetrieveInformationModelMove
    with open_association(pacs, local, [build_context(model)], gate=gate) as assoc:
        for ds in identifiers:
            _drain(pacs, assoc.send_c_move(ds, local.ae_title, model), report, "C-MOVE",
                   local)


def _get_classes(expected: list[InstanceMatch]) -> list[str]:
    """Storage classes to offer for C-GET: those the C-FIND reported, then the defaults."""
    return list(dict.fromkeys([*(i.sop_class_uid for i in expected if i.sop_class_uid),
                               *DEFAULT_GET_CLASSES]))[:120]


def _get(pacs: PacsSettings, local: LocalAE, writer: StagingWriter, identifiers: list[Dataset],
         report: RetrievalReport, classes: list[str], gate: Gate | None = None) -> None:
    model = StudyRootQueryRetrieveInformationModelGet
    contexts = [build_context(model)] + [build_context(c, GET_TRANSFER_SYNTAXES) for c in classes]
    roles = [build_role(c, scp_role=True) for c in classes]
    with open_association(pacs, local, contexts, ext_neg=roles, gate=gate,
                          evt_handlers=[(evt.EVT_C_STORE, writer.handle_store)]) as assoc:
        for ds in identifiers:
            _drain(pacs, assoc.send_c_get(ds, model), report, "C-GET")


#: C-MOVE statuses: "move destination unknown", and "unable to process" (the range a PACS
#: answers when it could not open an association to the destination it knows for us).
MOVE_DESTINATION_UNKNOWN = 0xA801
_UNABLE_TO_PROCESS = range(0xC000, 0xD000)


def _move_hint(local: LocalAE) -> str:
    """What to ask of the PACS administrator when C-MOVE cannot reach us."""
    return (f"the PACS must know our AE title {local.ae_title} with this host and port "
            f"{local.store_port} as a DICOM modality (ask its administrator) and reach that "
            "port through any firewall; or retrieve by C-GET (SAM2CT_PACS_METHOD=get, "
            "--method get)")


def _drain(pacs: PacsSettings, responses, report: RetrievalReport, what: str,
           local: LocalAE | None = None) -> None:
    """Consume C-MOVE/C-GET responses; add final sub-operation counts; raise on no response.

    A C-MOVE refused because the PACS does not know us as its destination raises
    :class:`MoveDestinationError` (no other attempt will do better); one it could not deliver
    names what to set up at the PACS (``local``: who we are).
    """
    for status, _ in responses:
        if not status:
            raise PacsTimeoutError(f"PACS {pacs.address}: {what} got no response (DIMSE timeout "
                                   "or association aborted)")
        code = status.Status
        if code in _PENDING:
            continue
        report.suboperations.add(status)
        failed = f"PACS {pacs.address}: {what} failed with status 0x{code:04X}"
        if code == MOVE_DESTINATION_UNKNOWN and local is not None:
            raise MoveDestinationError(f"{failed} (move destination unknown): "
                                       f"{_move_hint(local)}")
        if code in BUSY_STATUSES:
            report.errors.append(f"PACS {pacs.address}: {what} out of resources (0x{code:04X})")
        elif code in _UNABLE_TO_PROCESS and local is not None:
            report.errors.append(f"{failed} (unable to process; often the PACS could not send to us): "
                                 f"{_move_hint(local)}")
        elif code not in (0x0000, 0xB000):
            report.errors.append(failed)
        return
    raise PacsTimeoutError(f"PACS {pacs.address}: {what} ended without a final status")


def _present(staging: Path, expected: Sequence[InstanceMatch]) -> set[str]:
    return {i.sop_instance_uid for i in expected
            if staged_path(staging, i.study_instance_uid, i.series_instance_uid,
                           i.sop_instance_uid).is_file()}


def _log(report: RetrievalReport) -> None:
    # an incomplete one at DEBUG: its caller reports it (raise_if_incomplete, a recorded failure)
    logger.log(logging.INFO if report.complete else logging.DEBUG, "retrieved %d/%d instances of study %s by C-%s (%d already staged, %d "
               "missing, %d duplicates, %d failed) in %d attempt(s)", report.received,
               report.expected, report.study_instance_uid, report.method.value.upper(),
               report.already_present, len(report.missing), report.duplicates, report.failed,
               report.attempts)


__all__ = ["RetrievalReport", "SubOperations", "retrieve"]
