"""C-ECHO and Study Root C-FIND at study, series and image level; GSPS discovery in a date window.

Queries that hit the PACS's result limit are split automatically: into smaller date windows, then
a single day into StudyTime ranges. A discovery checks that its answers add up (see
:class:`Discovery`) and asks again, a few times, where they do not.

Example
-------
>>> found = discover_window(pacs, local, dt.date(2026, 1, 1), dt.date(2026, 1, 31))  # doctest: +SKIP
>>> found.complete, len(found.gsps), found.queries  # doctest: +SKIP
(True, 12, 9)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import TypeVar

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    GrayscaleSoftcopyPresentationStateStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_io.pacs.association import (
    BUSY_STATUSES,
    build_context,
    open_association,
    retry_with_backoff,
)
from dicom_io.pacs.errors import (
    IncompleteDiscoveryError,
    PacsBusyError,
    PacsError,
    PacsTimeoutError,
    QueryFailedError,
)
from dicom_io.pacs.settings import LocalAE, PacsSettings

logger = logging.getLogger(__name__)

GSPS_SOP_CLASS = str(GrayscaleSoftcopyPresentationStateStorage)
_PENDING = frozenset({0xFF00, 0xFF01})
_CANCELLED = 0xFE00

#: How often a discovery asks one question when its answer does not add up (see Discovery).
CHECK_ATTEMPTS = 3


class QueryLevel(StrEnum):
    """Study Root query/retrieve levels."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


#: Keys we ask for at each level (return keys, empty unless given a value).
RETURN_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: ("StudyInstanceUID", "StudyDate", "StudyTime", "ModalitiesInStudy",
                       "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    QueryLevel.SERIES: ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                        "NumberOfSeriesRelatedInstances"),
    QueryLevel.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                       "InstanceNumber"),
}


@dataclass(frozen=True)
class FindResult:
    """Matches of one C-FIND, and whether the PACS says the list is complete."""

    matches: tuple[Dataset, ...]
    complete: bool


@dataclass(frozen=True)
class StudyMatch:
    """One study found at study level; ``series_count``: its Number of Study Related Series
    (None when the PACS did not say)."""

    study_instance_uid: str
    study_date: str
    series_count: int | None = None


@dataclass(frozen=True)
class SeriesMatch:
    """One series found at series level; ``instance_count``: its Number of Series Related
    Instances (None when the PACS did not say)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instance_count: int | None = None


@dataclass(frozen=True)
class InstanceMatch:
    """One instance found at image level: what a retrieval must bring back."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class Discovery:
    """The GSPS of a date window, and whether every answer of the PACS added up.

    Each answer is checked against a count the PACS gave one level up: a study's series against
    its Number of Study Related Series, a PR series' instances against its Number of Series
    Related Instances. Where there is no such count (the window's studies; a PACS that returns
    none, such as dcmqrscp) the question is asked twice and the answers must agree. An answer
    that does not add up is asked again, up to ``CHECK_ATTEMPTS`` times in all, and every match
    seen is kept; what still does not add up is named in ``shortfalls`` (UIDs and counts only).

    Attributes
    ----------
    gsps : tuple of InstanceMatch
        The GSPS found (also when incomplete: they exist).
    shortfalls : tuple of str
        One line per answer that never added up; empty when the discovery is complete.
    queries : int
        C-FINDs it took.
    """

    gsps: tuple[InstanceMatch, ...]
    shortfalls: tuple[str, ...] = ()
    queries: int = 0

    @property
    def complete(self) -> bool:
        """True when every answer added up: nothing of the window was missed."""
        return not self.shortfalls

    def checked(self) -> list[InstanceMatch]:
        """The GSPS found; raises :class:`IncompleteDiscoveryError` unless complete."""
        if not self.complete:
            raise IncompleteDiscoveryError("discovery incomplete: " + "; ".join(self.shortfalls))
        return list(self.gsps)


def echo(pacs: PacsSettings, local: LocalAE) -> None:
    """C-ECHO the PACS; raise a :class:`PacsError` saying what failed."""
    with open_association(pacs, local, [build_context(Verification)]) as assoc:
        status = assoc.send_c_echo()
    if not status or status.Status != 0x0000:
        code = f"0x{status.Status:04X}" if status else "no response (timeout or abort)"
        raise QueryFailedError(f"PACS {pacs.address}: C-ECHO failed: {code}")


def make_identifier(level: QueryLevel, keys: Mapping[str, str] | None = None,
                    return_keys: Iterable[str] | None = None) -> Dataset:
    """A C-FIND identifier: the level, matching ``keys`` and empty return keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = QueryLevel(level).value
    for keyword in return_keys if return_keys is not None else RETURN_KEYS[QueryLevel(level)]:
        setattr(ds, keyword, "")
    for keyword, value in (keys or {}).items():
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"Invalid query key '{keyword}={value}' - {e}") from e
    return ds


def find_on(assoc: Association, pacs: PacsSettings, identifier: Dataset) -> FindResult:
    """Run one C-FIND on an open association; busy statuses raise :class:`PacsBusyError`."""
    matches: list[Dataset] = []
    for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise PacsTimeoutError(f"PACS {pacs.address}: C-FIND got no response (DIMSE timeout "
                                   "or association aborted)")
        code = status.Status
        if code in _PENDING:
            if found is not None:
                matches.append(found)
        elif code == 0x0000:
            return FindResult(tuple(matches), complete=True)
        elif code == _CANCELLED:
            return FindResult(tuple(matches), complete=False)
        elif code in BUSY_STATUSES:
            raise PacsBusyError(f"PACS {pacs.address}: C-FIND out of resources (0x{code:04X})")
        else:
            raise QueryFailedError(f"PACS {pacs.address}: C-FIND failed with status 0x{code:04X}")
    raise PacsTimeoutError(f"PACS {pacs.address}: C-FIND ended without a final status")


def find(pacs: PacsSettings, local: LocalAE, level: QueryLevel,
         keys: Mapping[str, str] | None = None,
         return_keys: Iterable[str] | None = None) -> FindResult:
    """One Study Root C-FIND in its own association (retried with back-off when busy)."""
    return on_one_association(pacs, local, lambda query: query(level, keys or {}, return_keys))


#: One C-FIND at a level with matching keys (and return keys: None for the level's defaults).
Finder = Callable[[QueryLevel, Mapping[str, str], Iterable[str] | None], FindResult]
T = TypeVar("T")


def on_one_association(pacs: PacsSettings, local: LocalAE, work: Callable[[Finder], T]) -> T:
    """``work(query)`` with every C-FIND it makes on one association; retried as a whole, with
    back-off, on a transient error not yet retried (busy, a lost association: see
    :func:`~dicom_io.pacs.association.retry_with_backoff`).

    One association for a whole discovery rather than one per query: the PACS's rate limit
    spaces association openings (a window of 12 studies took 25 of them), not queries.
    """
    def attempt() -> T:
        with open_association(pacs, local, [build_context(
                StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            def query(level: QueryLevel, keys: Mapping[str, str],
                      return_keys: Iterable[str] | None = None) -> FindResult:
                return find_on(assoc, pacs, make_identifier(level, keys, return_keys))

            return work(query)

    return retry_with_backoff(pacs, attempt)


def _date_range(start: dt.date, end: dt.date) -> str:
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def _hit_limit(pacs: PacsSettings, result: FindResult) -> bool:
    limit = pacs.result_limit
    return not result.complete or (limit is not None and len(result.matches) >= limit)


#: One C-FIND with the given matching keys (on an association the caller holds open).
Query = Callable[[Mapping[str, str]], FindResult]


def find_in_window(pacs: PacsSettings, local: LocalAE, level: QueryLevel, start: dt.date,
                   end: dt.date, keys: Mapping[str, str] | None = None,
                   return_keys: Iterable[str] | None = None) -> list[Dataset]:
    """C-FIND over StudyDate ``start..end``, split while the PACS's result limit is hit: the
    date window in halves, then a single day into StudyTime ranges (:func:`split_day`).

    Every query of the split runs on one association (retried as a whole when the PACS is busy).
    Raises :class:`QueryFailedError` when even one second of StudyTime exceeds the limit.
    """
    _check_window(start, end)
    return on_one_association(pacs, local, lambda query: _in_window(
        pacs, query, level, start, end, keys, return_keys))


def _in_window(pacs: PacsSettings, query: Finder, level: QueryLevel, start: dt.date,
               end: dt.date, keys: Mapping[str, str] | None = None,
               return_keys: Iterable[str] | None = None) -> list[Dataset]:
    return_keys = list(return_keys) if return_keys is not None else None
    return split_dates(pacs, lambda matching: query(level, matching, return_keys), start, end,
                       dict(keys or {}))


def _check_window(start: dt.date, end: dt.date) -> None:
    """Raise before any association is opened for a window that ends before it starts."""
    if end < start:
        raise ValueError(f"Invalid date window {start}..{end} - end before start")


def split_dates(pacs: PacsSettings, query: Query, start: dt.date, end: dt.date,
                keys: Mapping[str, str]) -> list[Dataset]:
    """Matches of ``keys`` with StudyDate ``start..end``, halving the window over the limit."""
    dated = {**keys, "StudyDate": _date_range(start, end)}
    result = query(dated)
    if not _hit_limit(pacs, result):
        return list(result.matches)
    if start == end:
        return split_day(pacs, query, start, keys, capped=result)
    mid = start + (end - start) // 2
    logger.info("C-FIND %s..%s hit the result limit; splitting at %s", start, end, mid)
    return (split_dates(pacs, query, start, mid, keys)
            + split_dates(pacs, query, mid + dt.timedelta(days=1), end, keys))


def split_day(pacs: PacsSettings, query: Query, day: dt.date, keys: Mapping[str, str],
              capped: FindResult) -> list[Dataset]:
    """Matches of ``keys`` on one StudyDate, by StudyTime ranges halved while over the limit.

    Range matching never returns a study without a StudyTime, so every match of the capped
    whole-day answer ``capped`` must be found again; one that is not raises
    :class:`QueryFailedError`. A PACS that cuts its answer shows only part of the day there, so
    a study without StudyTime beyond the cut goes unnoticed (see README, PACS settings).
    """
    logger.info("C-FIND of %s hit the result limit; splitting it by StudyTime", day)
    dated = {**keys, "StudyDate": f"{day:%Y%m%d}"}
    found = _split_times(pacs, query, day, 0, 86399, dated)
    seen = {_identity(d) for d in found}
    lost = [d for d in capped.matches if any(_identity(d)) and _identity(d) not in seen]
    if lost:
        raise QueryFailedError(
            f"PACS {pacs.address}: {day} has more C-FIND matches than its result limit and "
            f"{len(lost)} of them match no StudyTime range (StudyTime empty: "
            f"{sum(not str(d.get('StudyTime', '')) for d in lost)}); narrow the query")
    return found


def _split_times(pacs: PacsSettings, query: Query, day: dt.date, first: int, last: int,
                 keys: Mapping[str, str]) -> list[Dataset]:
    """Matches with StudyTime in seconds ``first..last`` of the day, halving the range."""
    result = query({**keys, "StudyTime": f"{_tm(first)}-{_tm(last, upper=True)}"})
    if not _hit_limit(pacs, result):
        return list(result.matches)
    if first == last:
        raise QueryFailedError(f"PACS {pacs.address}: more C-FIND matches on {day} at "
                               f"{_tm(first, upper=True)[:6]} than its result limit allows; "
                               "narrow the query")
    mid = (first + last) // 2
    return (_split_times(pacs, query, day, first, mid, keys)
            + _split_times(pacs, query, day, mid + 1, last, keys))


def _tm(second: int, *, upper: bool = False) -> str:
    """A TM bound for second ``second`` of the day: an upper bound covers the whole second
    (``HHMMSS.999999``); a lower bound drops trailing zero fields (``16`` for 16:00:00), so that
    PACSs comparing TM as text (Orthanc) still match values stored as ``HH`` or ``HHMM``."""
    h, m, s = second // 3600, second // 60 % 60, second % 60
    if upper:
        return f"{h:02d}{m:02d}{s:02d}.999999"
    return f"{h:02d}" + (f"{m:02d}" if m or s else "") + (f"{s:02d}" if s else "")


def _identity(ds: Dataset) -> tuple[str, str, str]:
    return tuple(str(ds.get(k, "")) for k in  # type: ignore[return-value]
                 ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))


def find_studies(pacs: PacsSettings, local: LocalAE, start: dt.date, end: dt.date
                 ) -> list[StudyMatch]:
    """Studies whose StudyDate lies in ``start..end``, without duplicates."""
    _check_window(start, end)
    return on_one_association(pacs, local, lambda query: _studies(pacs, query, start, end))


def find_series(pacs: PacsSettings, local: LocalAE, study_uid: str,
                modality: str | None = None) -> list[SeriesMatch]:
    """Series of one study, optionally only those of ``modality``."""
    return on_one_association(pacs, local, lambda query: _series(pacs, query, study_uid,
                                                                 modality))


def find_instances(pacs: PacsSettings, local: LocalAE, study_uid: str,
                   series_uid: str | None = None) -> list[InstanceMatch]:
    """Instances of one series, or of every series of the study when ``series_uid`` is None."""
    return on_one_association(pacs, local, lambda query: _instances(pacs, query, study_uid,
                                                                    series_uid))


def discover_gsps(pacs: PacsSettings, local: LocalAE, start: dt.date, end: dt.date,
                  sop_classes: Sequence[str] = (GSPS_SOP_CLASS,)) -> list[InstanceMatch]:
    """Every GSPS of the studies dated ``start..end`` (:func:`discover_window`); raises
    :class:`IncompleteDiscoveryError` when the PACS's answers did not add up."""
    return discover_window(pacs, local, start, end, sop_classes).checked()


def discover_window(pacs: PacsSettings, local: LocalAE, start: dt.date, end: dt.date,
                    sop_classes: Sequence[str] = (GSPS_SOP_CLASS,),
                    attempts: int = CHECK_ATTEMPTS) -> Discovery:
    """Every GSPS of the studies dated ``start..end``, checked: studies → their series → the
    PR series' instances, every query on one association.

    Instances whose SOP Class is not in ``sop_classes`` (e.g. other presentation states) are left
    out; an instance whose class the PACS does not return is kept. See :class:`Discovery` for
    the checks; with the PACS's counts a window costs one C-FIND more than unchecked (its
    studies asked twice), without them every question is asked twice.
    """
    if attempts < 2:
        raise ValueError(f"Invalid 'attempts' value {attempts} - must be at least 2")
    _check_window(start, end)

    def work(query: Finder) -> Discovery:
        counted = _Counted(query)
        found, shortfalls = _window_gsps(pacs, counted, start, end, sop_classes, attempts)
        return Discovery(tuple(found), tuple(shortfalls), counted.calls)

    return on_one_association(pacs, local, work)


class _Counted:
    """A :data:`Finder` that counts the C-FINDs made through it."""

    def __init__(self, query: Finder) -> None:
        self._query = query
        self.calls = 0

    def __call__(self, level: QueryLevel, keys: Mapping[str, str],
                 return_keys: Iterable[str] | None = None) -> FindResult:
        self.calls += 1
        return self._query(level, keys, return_keys)


def _window_gsps(pacs: PacsSettings, query: Finder, start: dt.date, end: dt.date,
                 sop_classes: Sequence[str], attempts: int
                 ) -> tuple[list[InstanceMatch], list[str]]:
    """The window's GSPS and what did not add up: studies, then each study's PR series."""
    studies, short = _until_it_adds_up(
        partial(_studies, pacs, query, start, end), lambda s: s.study_instance_uid, None,
        f"studies of {start}..{end}", attempts)
    shortfalls = [short] if short else []
    found: list[InstanceMatch] = []
    for study in sorted(studies, key=lambda s: (s.study_date, s.study_instance_uid)):
        uid = study.study_instance_uid
        series, short = _until_it_adds_up(
            partial(_series, pacs, query, uid), lambda s: s.series_instance_uid,
            study.series_count, f"series of study {uid}", attempts)
        shortfalls += [short] if short else []
        for pr in (s for s in series if s.modality == "PR"):
            instances, short = _until_it_adds_up(
                partial(_instances, pacs, query, uid, pr.series_instance_uid),
                lambda i: i.sop_instance_uid, pr.instance_count,
                f"instances of series {pr.series_instance_uid}", attempts)
            shortfalls += [short] if short else []
            found += [i for i in instances if not i.sop_class_uid or i.sop_class_uid in sop_classes]
    return _unique(found), shortfalls


def _until_it_adds_up(ask: Callable[[], list[T]], key: Callable[[T], str], expected: int | None,
                      what: str, attempts: int) -> tuple[list[T], str | None]:
    """Ask until the answer adds up: ``expected`` matches (the count the PACS gave one level
    up; more is an object that arrived since) or, without a count, the same matches twice
    running. Return every match seen and, if it never added up, a line saying so."""
    seen: dict[str, T] = {}
    last: set[str] | None = None
    for _ in range(attempts):
        answer = {key(item): item for item in ask()}
        for k, item in answer.items():
            seen.setdefault(k, item)
        if (len(seen) >= expected) if expected is not None else set(answer) == last:
            return list(seen.values()), None
        last = set(answer)
    if expected is not None:
        return list(seen.values()), (f"{what}: {len(seen)} of the {expected} the PACS counts, "
                                     f"after {attempts} queries")
    return list(seen.values()), f"{what}: {attempts} answers, no two running alike"


def _count(ds: Dataset, keyword: str) -> int | None:
    """An IS count the PACS returned, or None when it returned none (or nonsense)."""
    try:
        value = int(ds.get(keyword) or "")
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _studies(pacs: PacsSettings, query: Finder, start: dt.date, end: dt.date
             ) -> list[StudyMatch]:
    found = _in_window(pacs, query, QueryLevel.STUDY, start, end)
    unique = {d.StudyInstanceUID: StudyMatch(d.StudyInstanceUID, str(d.get("StudyDate", "")),
                                             _count(d, "NumberOfStudyRelatedSeries"))
              for d in found if d.get("StudyInstanceUID")}
    return sorted(unique.values(), key=lambda s: (s.study_date, s.study_instance_uid))


def _series(pacs: PacsSettings, query: Finder, study_uid: str,
            modality: str | None = None) -> list[SeriesMatch]:
    keys = {"StudyInstanceUID": study_uid, **({"Modality": modality} if modality else {})}
    result = _complete(pacs, query(QueryLevel.SERIES, keys, None), f"study {study_uid}")
    return [SeriesMatch(study_uid, d.SeriesInstanceUID, str(d.get("Modality", "")),
                        _count(d, "NumberOfSeriesRelatedInstances"))
            for d in result if d.get("SeriesInstanceUID")
            and (modality is None or d.get("Modality") == modality)]


def _instances(pacs: PacsSettings, query: Finder, study_uid: str,
               series_uid: str | None = None) -> list[InstanceMatch]:
    series = ([series_uid] if series_uid else
              [s.series_instance_uid for s in _series(pacs, query, study_uid)])
    out: list[InstanceMatch] = []
    for uid in series:
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid}
        result = _complete(pacs, query(QueryLevel.IMAGE, keys, None), f"series {uid}")
        out.extend(InstanceMatch(study_uid, uid, d.SOPInstanceUID, str(d.get("SOPClassUID", "")))
                   for d in result if d.get("SOPInstanceUID"))
    return _unique(out)


def _complete(pacs: PacsSettings, result: FindResult, what: str) -> tuple[Dataset, ...]:
    if _hit_limit(pacs, result) and not result.complete:
        raise QueryFailedError(f"PACS {pacs.address}: C-FIND of {what} was cut at its result "
                               f"limit ({len(result.matches)} matches)")
    return result.matches


def _unique(items: list[InstanceMatch]) -> list[InstanceMatch]:
    return list({i.sop_instance_uid: i for i in items}.values())


__all__ = ["CHECK_ATTEMPTS", "Discovery", "FindResult", "IncompleteDiscoveryError",
           "InstanceMatch", "PacsError", "QueryLevel", "SeriesMatch", "StudyMatch",
           "discover_gsps", "discover_window", "echo", "find", "find_in_window", "find_instances",
           "find_series", "find_studies", "make_identifier", "on_one_association", "split_dates",
           "split_day"]
