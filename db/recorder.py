"""Idempotent writes: every record is an upsert on its unique key (INSERT .. ON CONFLICT).

Re-recording the same results adds no row; two processes recording the same results at once end
with one row each and no error (PostgreSQL serialises the conflicting inserts on the unique index).
A GSPS drawn on several series is recorded once per series: each annotation gets the series it
was recorded with; the presentation state keeps the first series it was recorded with.
Segmentation writes also move ``segmentation_summary`` (triggers, migration 0002): on
PostgreSQL their transactions queue on one advisory lock so the triggers cannot deadlock; a
transaction PostgreSQL still picks as a deadlock or serialization victim is rerun (3 tries).

Example
-------
>>> rec = Recorder(make_engine("sqlite:///catalog.sqlite"))  # doctest: +SKIP
>>> rec.record_series_results(SeriesResults(study, series, (ps,), annotations, segmentations))
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from db.models import (
    Annotation,
    Failure,
    HarvestRun,
    PatientPseudonym,
    PresentationState,
    Segmentation,
    Series,
    Study,
)
from db.records import (
    AnnotationRecord,
    FailureRecord,
    HarvestRunRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)

# Rows per INSERT statement: well under SQLite's bound-parameter limit.
_BATCH = 500
# Whole-transaction attempts when PostgreSQL picks it as a deadlock or serialization victim.
_ATTEMPTS = 3
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure

# pg_advisory_xact_lock key of the segmentation writers ("SAM2CT" in ASCII)
_WRITERS_LOCK = 0x53414D324354

T = TypeVar("T")


@dataclass(frozen=True)
class RecordedCounts:
    """How many rows of each kind one call wrote (inserted or updated)."""

    studies: int = 0
    series: int = 0
    presentation_states: int = 0
    annotations: int = 0
    segmentations: int = 0


def _insert(connection: Connection, table: Table):
    """The dialect's INSERT with ON CONFLICT support."""
    name = connection.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"Invalid catalog dialect '{name}' - only sqlite and postgresql are supported")


def upsert(connection: Connection, table: Table, rows: Sequence[dict[str, Any]],
           keys: Sequence[str], update_columns: Sequence[str] | None = None) -> dict[tuple, int]:
    """Insert ``rows`` or update ``update_columns`` where ``keys`` exist; return key -> id.

    Rows are de-duplicated on their key (last wins) and written in key order, so concurrent
    writers take row locks in the same order and cannot deadlock.
    """
    unique = {tuple(row[k] for k in keys): row for row in rows}
    ordered = [unique[k] for k in sorted(unique, key=lambda k: tuple(map(str, k)))]
    ids: dict[tuple, int] = {}
    for start in range(0, len(ordered), _BATCH):
        stmt = _insert(connection, table).values(ordered[start:start + _BATCH])
        columns = update_columns or [keys[0]]  # a no-op update still returns the existing id
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
        ).returning(table.c.id, *(table.c[k] for k in keys))
        for row in connection.execute(stmt):
            ids[tuple(row[1:])] = row[0]
    return ids


def _ids_by(connection: Connection, table: Table, column: str, values: Iterable) -> dict:
    """column value -> id for existing rows."""
    values = list(set(values))
    if not values:
        return {}
    result = connection.execute(select(table.c[column], table.c.id).where(
        table.c[column].in_(values)))
    return {value: row_id for value, row_id in result}


class Recorder:
    """Writes pipeline results into the catalog; every method is idempotent."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- patients and runs ------------------------------------------------------------------
    def pseudonym(self, connection: Connection, patient_id: str) -> str:
        """The patient's pseudonym, created (random) the first time the patient is seen."""
        table = PatientPseudonym.__table__
        stmt = _insert(connection, table).values(patient_id=patient_id,
                                                 pseudonym=secrets.token_hex(8))
        stmt = stmt.on_conflict_do_update(index_elements=["patient_id"],
                                          set_={"patient_id": stmt.excluded.patient_id})
        return connection.execute(stmt.returning(table.c.pseudonym)).scalar_one()

    def record_run(self, run: HarvestRunRecord) -> int:
        """Create or update the harvest run of (pacs, window); return its id."""
        row = {"pacs": run.pacs, "window_start": run.window_start, "window_end": run.window_end,
               "status": run.status, "found": run.found, "retrieved": run.retrieved,
               "segmented": run.segmented, "failed": run.failed,
               "started_at": run.started_at or datetime.now(UTC),
               "finished_at": run.finished_at, "flow_run_id": run.flow_run_id}
        keys = ("pacs", "window_start", "window_end")
        updated = ["status", "found", "retrieved", "segmented", "failed", "finished_at",
                   "flow_run_id"]
        with self.engine.begin() as conn:
            return next(iter(upsert(conn, HarvestRun.__table__, [row], keys, updated).values()))

    # --- results of one series --------------------------------------------------------------
    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction, again (up to 3 times) if PostgreSQL aborted it as a
        deadlock or serialization victim; any other error, or the last one, propagates."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as e:
                if getattr(e.orig, "sqlstate", None) not in _RETRY_SQLSTATES or \
                        attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def record_series_results(self, results: SeriesResults) -> RecordedCounts:
        """Record a study, its series, GSPS, annotations and segmentations in one transaction."""
        return self._transaction(lambda conn: self._record_series_results(conn, results))

    def _record_series_results(self, conn: Connection, results: SeriesResults) -> RecordedCounts:
        _serialise_segmentation_writers(conn)
        study_id = self._study(conn, results.study)
        series_id = self._series(conn, results.series, {results.study.study_instance_uid:
                                                        study_id})
        ps_ids = self._presentation_states(conn, results.presentation_states, series_id,
                                           results.series.series_instance_uid)
        ann_ids = self._annotations(conn, results.annotations, ps_ids, series_id,
                                    results.series.series_instance_uid)
        seg_count = self._segmentations(conn, results.segmentations, ann_ids,
                                        results.study.study_date)
        return RecordedCounts(1, 1, len(ps_ids), len(ann_ids), seg_count)

    def record_study(self, study: StudyRecord) -> int:
        """Create or update one study; return its id."""
        def work(conn: Connection) -> int:
            _serialise_segmentation_writers(conn)
            return self._study(conn, study)

        return self._transaction(work)

    def _study(self, conn: Connection, study: StudyRecord) -> int:
        row = {"study_instance_uid": study.study_instance_uid,
               "patient_pseudonym": self.pseudonym(conn, study.patient_id),
               "study_date": study.study_date}
        ids = upsert(conn, Study.__table__, [row], ["study_instance_uid"], ["study_date"])
        study_id = ids[(study.study_instance_uid,)]
        # keep the copy of the date on the study's segmentations in step
        series_ids = select(Series.id).where(Series.study_id == study_id).scalar_subquery()
        conn.execute(update(Segmentation.__table__)
                     .where(Segmentation.series_id.in_(series_ids),
                            Segmentation.study_date.is_distinct_from(study.study_date))
                     .values(study_date=study.study_date))
        return study_id

    def _series(self, conn: Connection, series: SeriesRecord, study_ids: dict[str, int]) -> int:
        study_id = study_ids.get(series.study_instance_uid) or _ids_by(
            conn, Study.__table__, "study_instance_uid", [series.study_instance_uid]).get(
            series.study_instance_uid)
        if study_id is None:
            raise ValueError(f"Invalid series {series.series_instance_uid} - its study "
                             f"{series.study_instance_uid} is not in the catalog")
        spacing = series.spacing_mm or (None, None, None)
        row = {"series_instance_uid": series.series_instance_uid, "study_id": study_id,
               "modality": series.modality, "body_part": series.body_part,
               "slices": series.slices, "spacing_slice_mm": spacing[0],
               "spacing_row_mm": spacing[1], "spacing_col_mm": spacing[2],
               "manufacturer": series.manufacturer, "storage_path": series.storage_path}
        updated = [c for c in row if c != "series_instance_uid"]
        ids = upsert(conn, Series.__table__, [row], ["series_instance_uid"], updated)
        return ids[(series.series_instance_uid,)]

    def _presentation_states(self, conn: Connection, states: Sequence[PresentationStateRecord],
                             series_id: int, series_uid: str) -> dict[str, int]:
        for ps in states:
            if ps.series_instance_uid != series_uid:
                raise ValueError(f"Invalid presentation state {ps.sop_instance_uid} - it is on "
                                 f"series {ps.series_instance_uid}, recorded with {series_uid}")
        rows = [{"sop_instance_uid": ps.sop_instance_uid, "series_id": series_id,
                 "path": ps.path} for ps in states]
        # series_id is not updated: it stays the first series the GSPS was recorded with
        ids = upsert(conn, PresentationState.__table__, rows, ["sop_instance_uid"], ["path"])
        return {key[0]: value for key, value in ids.items()}

    def _annotations(self, conn: Connection, annotations: Sequence[AnnotationRecord],
                     ps_ids: dict[str, int], series_id: int,
                     series_uid: str) -> dict[tuple[str, int], tuple]:
        missing = {a.gsps_sop_instance_uid for a in annotations} - set(ps_ids)
        if missing:
            raise ValueError(f"Invalid annotations - presentation state(s) {sorted(missing)} "
                             "are not recorded with them")
        for a in annotations:
            if a.series_instance_uid not in (None, series_uid):
                raise ValueError(f"Invalid annotation {a.index} of presentation state "
                                 f"{a.gsps_sop_instance_uid} - it is on series "
                                 f"{a.series_instance_uid}, recorded with {series_uid}")
        rows = [_annotation_row(a, ps_ids[a.gsps_sop_instance_uid], series_id)
                for a in annotations]
        ids = upsert(conn, Annotation.__table__, rows, ["presentation_state_id", "gsps_index"],
                     [c for c in rows[0] if c not in ("presentation_state_id", "gsps_index")]
                     if rows else None)
        by_ps = {v: k for k, v in ps_ids.items()}
        kinds = {(a.gsps_sop_instance_uid, a.index): a.kind for a in annotations}
        return {(by_ps[ps], index): (ann_id, series_id, kinds[(by_ps[ps], index)])
                for (ps, index), ann_id in ids.items()}

    def _segmentations(self, conn: Connection, segmentations: Sequence[SegmentationRecord],
                       ann_ids: dict[tuple[str, int], tuple], study_date: date | None) -> int:
        rows = []
        for seg in segmentations:
            key = (seg.gsps_sop_instance_uid, seg.annotation_index)
            if key not in ann_ids:
                raise ValueError(f"Invalid segmentation - annotation {key[1]} of presentation "
                                 f"state {key[0]} is not recorded with it")
            rows.append(_segmentation_row(seg, *ann_ids[key]) | {"study_date": study_date})
        keys = ["annotation_id", "model_name", "model_version", "checkpoint_sha256"]
        updated = [c for c in rows[0] if c not in keys] if rows else None
        return len(upsert(conn, Segmentation.__table__, rows, keys, updated))

    # --- failures ---------------------------------------------------------------------------
    def record_failure(self, failure: FailureRecord) -> int:
        """Record a failure, or count one more attempt of a known one; return the attempts."""
        table = Failure.__table__
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            stmt = _insert(conn, table).values(
                stage=failure.stage, object_uid=failure.object_uid,
                error_class=failure.error_class, message=failure.message, attempts=1,
                run_id=failure.run_id, first_seen=now, last_seen=now)
            stmt = stmt.on_conflict_do_update(
                index_elements=["stage", "object_uid"],
                set_={"attempts": table.c.attempts + 1, "error_class": stmt.excluded.error_class,
                      "message": stmt.excluded.message, "run_id": stmt.excluded.run_id,
                      "last_seen": stmt.excluded.last_seen, "resolved_at": None})
            return conn.execute(stmt.returning(table.c.attempts)).scalar_one()

    def resolve_failure(self, stage: str, object_uid: str) -> bool:
        """Mark a failure solved (the retry worked); True when there was an open one."""
        table = Failure.__table__
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(
                table.c.stage == stage, table.c.object_uid == object_uid,
                table.c.resolved_at.is_(None)).values(resolved_at=datetime.now(UTC)))
            return result.rowcount > 0


def _serialise_segmentation_writers(connection: Connection) -> None:
    """PostgreSQL: wait for the other writers of segmentations to commit (transaction lock).

    The summary triggers lock summary rows in the order segmentations are written, and the
    rows a writer overwrites can change while it waits; two writers could deadlock. One advisory
    lock taken first makes them queue instead (a write is milliseconds; segmenting a series is
    seconds). SQLite already admits one writer at a time.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_WRITERS_LOCK)))


def _annotation_row(a: AnnotationRecord, ps_id: int, series_id: int) -> dict[str, Any]:
    return {"presentation_state_id": ps_id, "series_id": series_id, "gsps_index": a.index,
            "kind": a.kind,
            "slice_index": a.slice_index, "points_voxel": [list(p) for p in a.points_voxel],
            "points_mm": [list(p) for p in a.points_mm], "length_mm": a.length_mm,
            "text": a.text, "layer": a.layer, "skip_reason": a.skip_reason}


def _segmentation_row(s: SegmentationRecord, annotation_id: int, series_id: int,
                      kind: str) -> dict[str, Any]:
    """The record's fields are the table's columns of the same names (bbox as a JSON list,
    quality flags as a JSON list of ``{"code", "reason"}`` with their count)."""
    row = asdict(s)
    row["bbox"] = list(s.bbox) if s.bbox is not None else None
    row["quality_flags"] = (None if s.quality_flags is None else
                            [{"code": code, "reason": reason} for code, reason in s.quality_flags])
    row["flag_count"] = s.flag_count
    return {"annotation_id": annotation_id, "series_id": series_id, "kind": kind, **row}
