"""One harvest window end to end at the DICOM level: discover the GSPS, retrieve them, read which
CT series they reference, retrieve only those series. Each step is also usable on its own (the
Prefect flows call them task by task).

Example
-------
>>> report = harvest_window(pacs, local, staging, dt.date(2026, 1, 5), dt.date(2026, 1, 5))  # doctest: +SKIP
>>> report.complete, len(report.series)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_io.errors import DicomInputError
from dicom_io.pacs.query import InstanceMatch, discover_gsps
from dicom_io.pacs.retrieve import RetrievalReport, retrieve
from dicom_io.pacs.settings import LocalAE, PacsSettings, RetrieveMethod
from dicom_io.pacs.storage import StorageSCP, staged_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesRef:
    """A series a GSPS points at, with the instances it names."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]


@dataclass
class HarvestReport:
    """What one window yielded: GSPS found and staged, series referenced, every retrieval."""

    start: dt.date
    end: dt.date
    gsps: list[InstanceMatch] = field(default_factory=list)
    gsps_files: list[Path] = field(default_factory=list)
    series: list[SeriesRef] = field(default_factory=list)
    retrievals: list[RetrievalReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every retrieval brought every expected instance."""
        return all(r.complete for r in self.retrievals)


def referenced_series(path: Path) -> list[SeriesRef]:
    """The series (and instances) a presentation state references, from its Referenced Series
    Sequence; raises :class:`DicomInputError` for a file that is not a readable GSPS."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as e:
        raise DicomInputError(f"GSPS {Path(path).name}: not a readable DICOM file") from e
    study = str(ds.get("StudyInstanceUID", ""))
    refs = []
    for item in ds.get("ReferencedSeriesSequence", []):
        sops = tuple(str(i.ReferencedSOPInstanceUID)
                     for i in item.get("ReferencedImageSequence", [])
                     if "ReferencedSOPInstanceUID" in i)
        if "SeriesInstanceUID" in item:
            refs.append(SeriesRef(study, str(item.SeriesInstanceUID), sops))
    if not refs:
        raise DicomInputError(f"GSPS {Path(path).name}: references no series")
    return refs


def merge_refs(refs: Iterable[SeriesRef]) -> list[SeriesRef]:
    """One :class:`SeriesRef` per series, instance lists merged."""
    merged: dict[tuple[str, str], set[str]] = defaultdict(set)
    for ref in refs:
        merged[(ref.study_instance_uid, ref.series_instance_uid)].update(ref.sop_instance_uids)
    return [SeriesRef(st, se, tuple(sorted(sops))) for (st, se), sops in merged.items()]


def harvest_window(pacs: PacsSettings, local: LocalAE, staging: Path, start: dt.date,
                   end: dt.date, *, scp: StorageSCP | None = None) -> HarvestReport:
    """Discover the GSPS of ``start..end``, stage them, then stage only the series they reference.

    Retrieval problems are recorded in the report (``complete`` is False), not raised, so one bad
    series does not stop the window; query failures raise.
    """
    report = HarvestReport(start, end, gsps=discover_gsps(pacs, local, start, end))
    with ExitStack() as stack:
        if scp is None and pacs.method is RetrieveMethod.MOVE and report.gsps:
            scp = stack.enter_context(StorageSCP(local, staging, extra_callers=[pacs.ae_title]))
        _retrieve_all(pacs, local, staging, scp, report)
    return report


def _retrieve_all(pacs: PacsSettings, local: LocalAE, staging: Path, scp: StorageSCP | None,
                  report: HarvestReport) -> None:
    by_series: dict[tuple[str, str], list[InstanceMatch]] = defaultdict(list)
    for g in report.gsps:
        by_series[(g.study_instance_uid, g.series_instance_uid)].append(g)
    for (study, series), items in by_series.items():
        report.retrievals.append(retrieve(pacs, local, staging, study, series, expected=items,
                                          scp=scp))
    refs = []
    for g in report.gsps:
        path = staged_path(staging, g.study_instance_uid, g.series_instance_uid,
                           g.sop_instance_uid)
        if path.is_file():
            report.gsps_files.append(path)
            refs.extend(_refs_or_log(path))
    report.series = merge_refs(refs)
    for ref in report.series:
        report.retrievals.append(retrieve(pacs, local, staging, ref.study_instance_uid,
                                          ref.series_instance_uid, scp=scp))


def _refs_or_log(path: Path) -> list[SeriesRef]:
    try:
        return referenced_series(path)
    except DicomInputError as e:
        logger.warning("%s", e)
        return []
