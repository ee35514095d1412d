"""The catalog on both SQLite and the real PostgreSQL: migrations, idempotent upserts, queries."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import fresh_pg_database
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import OperationalError

from db import CatalogFilter, Recorder, open_catalog, query_frame, query_rows, stats
from db.migrate import alembic_config, current_revision, downgrade, upgrade
from db.models import (
    Annotation,
    Base,
    PatientPseudonym,
    PresentationState,
    Segmentation,
    SegmentationSummary,
    Series,
    Study,
)
from db.queries import (
    _segmentation_stats,
    completed_windows,
    failures_by_stage,
    open_failure_uids,
    open_failures,
    recorded_presentation_states,
    series_state,
    summary_answers,
    table_counts,
)
from db.recorder import _serialise_segmentation_writers
from db.records import (
    AnnotationRecord,
    FailureRecord,
    HarvestRunRecord,
    PresentationStateRecord,
    RunStatus,
    SegmentationRecord,
    SegStatus,
    SeriesRecord,
    SeriesResults,
    Stage,
    StudyRecord,
)
from db.summary import month_expression, month_key, rebuild

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_pg_database("sam2ct_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty catalog URL on each backend (PostgreSQL: the session database, emptied)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    url = request.getfixturevalue("pg_url")
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def series_results(n: int, *, patient: str = "PAT-SECRET-1", kind: str = "line",
                   volume: float = 2.0, day: date | None = date(2025, 3, 1), model: str = "classical",
                   status: SegStatus = SegStatus.OK, body_part: str = "CHEST",
                   annotations: int = 2) -> SeriesResults:
    """Results of one synthetic series number ``n`` (UIDs derived from n)."""
    study, series, gsps = f"1.2.826.0.1.{n}", f"1.2.826.0.1.{n}.1", f"1.2.826.0.1.{n}.2"
    anns = tuple(AnnotationRecord(gsps, i, kind, series, slice_index=5 + i,
                                  points_voxel=((10.0, 20.0), (30.0, 40.0)),
                                  points_mm=((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), length_mm=12.5,
                                  text="lesion", layer="L1") for i in range(annotations))
    segs = tuple(SegmentationRecord(
        gsps_sop_instance_uid=gsps, annotation_index=i, model_name=model, model_version="1.0",
        status=status, seg_sop_instance_uid=f"{gsps}.9", segment_number=i + 1,
        seg_path=f"/out/{gsps}.dcm", voxels=2000, volume_ml=volume + i, long_axis_mm=20.0,
        short_axis_mm=10.0, bbox=(1, 2, 3, 4, 5, 6), mean_hu=35.0, preview_path=f"/out/{i}.png")
        for i in range(annotations))
    return SeriesResults(
        StudyRecord(study, patient, day),
        SeriesRecord(series, study, "CT", body_part, 100, (3.0, 0.8, 0.8), "ACME", f"/s/{n}"),
        (PresentationStateRecord(gsps, series, f"/g/{n}.dcm"),), anns, segs)


def test_upgrade_from_empty_creates_every_table(catalog_url: str) -> None:
    upgrade(catalog_url)
    upgrade(catalog_url)  # a second run is a no-op
    assert current_revision(catalog_url) == HEAD
    engine = create_engine(catalog_url)
    names = set(inspect(engine).get_table_names())
    with engine.connect() as conn:  # the migrations build exactly what the models declare
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"harvest_run", "study", "series", "presentation_state", "annotation",
            "segmentation", "failure", "patient_pseudonym", "alembic_version"} <= names
    downgrade(engine, "base")  # and the downgrade removes it all again
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(catalog_url)
    assert current_revision(catalog_url) == HEAD


def test_recording_twice_adds_nothing_and_updates(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1))
    first = table_counts(engine)
    rec.record_series_results(series_results(1, volume=7.0))
    assert table_counts(engine) == first
    assert first["segmentations"] == 2 and first["annotations"] == 2 and first["studies"] == 1
    assert sorted(r.volume_ml for r in query_rows(engine)) == [7.0, 8.0]
    engine.dispose()


def test_corrected_study_date_reaches_the_date_filter(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1, day=date(2024, 1, 1)))
    rec.record_study(StudyRecord("1.2.826.0.1.1", "PAT-SECRET-1", date(2025, 6, 1)))
    rows = query_rows(engine, CatalogFilter(since=date(2025, 1, 1)))
    assert len(rows) == 2 and {r.study_date for r in rows} == {date(2025, 6, 1)}
    engine.dispose()


def test_patient_identity_only_in_pseudonym_table(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1, patient="PAT-SECRET-1"))
    rec.record_series_results(series_results(2, patient="PAT-SECRET-1"))
    rec.record_series_results(series_results(3, patient="PAT-SECRET-2"))
    with engine.connect() as conn:
        pseudonyms = dict(conn.execute(select(Study.study_instance_uid, Study.patient_pseudonym)).all())
        mapping = dict(conn.execute(select(PatientPseudonym.patient_id,
                                           PatientPseudonym.pseudonym)).all())
    assert pseudonyms["1.2.826.0.1.1"] == pseudonyms["1.2.826.0.1.2"] == mapping["PAT-SECRET-1"]
    assert pseudonyms["1.2.826.0.1.3"] == mapping["PAT-SECRET-2"] != mapping["PAT-SECRET-1"]
    dump = query_frame(engine).to_csv()
    assert "PAT-SECRET" not in dump
    engine.dispose()


def test_query_filters_select_the_right_rows(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1, kind="line", volume=0.5, day=date(2024, 6, 1)))
    rec.record_series_results(series_results(2, kind="arrow", volume=3.0, day=date(2025, 2, 1),
                                             model="sam2ct", body_part="ABDOMEN"))
    rec.record_series_results(series_results(3, kind="line", volume=5.0, day=date(2025, 8, 1),
                                             status=SegStatus.NEEDS_REVIEW))

    def studies(**kw) -> list[str]:
        return sorted({r.study_instance_uid[-1] for r in query_rows(engine, CatalogFilter(**kw))})

    assert studies(kind="line") == ["1", "3"]
    assert studies(min_volume_ml=1.0, max_volume_ml=2.0) == ["1"]  # volumes: n's base, base + 1
    assert studies(min_volume_ml=4.5) == ["3"]
    assert studies(since=date(2025, 1, 1)) == ["2", "3"]
    assert studies(until=date(2025, 2, 1)) == ["1", "2"]
    assert studies(model="sam2ct") == ["2"]
    assert studies(status="needs-review") == ["3"]
    assert studies(body_part="abdomen") == ["2"]
    assert studies(kind="line", min_volume_ml=1.0, since=date(2025, 1, 1),
                   status=SegStatus.NEEDS_REVIEW) == ["3"]
    assert studies(study_instance_uid="1.2.826.0.1.2") == ["2"]
    assert len(query_rows(engine, limit=2)) == 2
    engine.dispose()


def test_stats_group_by_kind_model_status(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1, kind="line", volume=1.0))
    rec.record_series_results(series_results(2, kind="line", volume=3.0))
    rec.record_series_results(series_results(3, kind="arrow", model="sam2ct"))
    frame = stats(engine)
    line = frame[(frame.kind == "line") & (frame.model_name == "classical")].iloc[0]
    assert line.segmentations == 4 and line.total_volume_ml == pytest.approx(1 + 2 + 3 + 4)
    assert set(frame.kind) == {"line", "arrow"}
    assert stats(engine, CatalogFilter(since=date(2030, 1, 1))).empty
    engine.dispose()


def test_failures_count_attempts_and_resolve(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    failure = FailureRecord(Stage.RETRIEVE, "1.2.3", "TimeoutError", "C-MOVE timed out")
    assert [rec.record_failure(failure) for _ in range(3)] == [1, 2, 3]
    rec.record_failure(FailureRecord(Stage.PARSE, "1.2.4", "DicomInputError", "bad GSPS"))
    assert failures_by_stage(engine) == {"retrieve": 1, "parse": 1}
    assert rec.resolve_failure("retrieve", "1.2.3") is True
    assert rec.resolve_failure("retrieve", "1.2.3") is False
    assert list(open_failures(engine).object_uid) == ["1.2.4"]
    assert rec.record_failure(failure) == 4  # it failed again: open again, one more attempt
    assert failures_by_stage(engine) == {"retrieve": 1, "parse": 1}
    engine.dispose()


def test_harvest_run_upsert_keeps_one_row_per_window(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC)
    run_id = rec.record_run(HarvestRunRecord("ORTHANC@127.0.0.1:4242", start, end))
    again = rec.record_run(HarvestRunRecord("ORTHANC@127.0.0.1:4242", start, end,
                                            RunStatus.COMPLETED, found=3, segmented=2,
                                            flow_run_id="abc"))
    assert again == run_id
    assert table_counts(engine)["harvest_runs"] == 1
    rec.record_series_results(series_results(1))
    assert recorded_presentation_states(engine, ["1.2.826.0.1.1.2", "9.9"]) == {"1.2.826.0.1.1.2"}
    engine.dispose()


def test_what_the_harvest_asks_the_catalog(catalog_url: str) -> None:
    """A series' state, open failures of one kind, and the windows that completed cleanly."""
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1))
    rec.record_series_results(series_results(2, status=SegStatus.FAILED, annotations=1))
    one, two = series_state(engine, "1.2.826.0.1.1.1"), series_state(engine, "1.2.826.0.1.2.1")
    assert (one.ok, one.failed, one.failed_stage) == (2, 0, None)
    assert one.seg_paths == ["/out/1.2.826.0.1.1.2.dcm"] and len(one.preview_paths) == 2
    assert (two.ok, two.failed) == (0, 1)
    rec.record_failure(FailureRecord(Stage.SEGMENT, "1.2.826.0.1.1.1", "MemoryError", "oom"))
    assert series_state(engine, "1.2.826.0.1.1.1").failed_stage == "segment"
    rec.record_failure(FailureRecord(Stage.SEGMENT, "9.1", "SeriesFailed", "held"))
    rec.record_failure(FailureRecord(Stage.SEGMENT, "9.2", "OtherError", "not held"))
    assert open_failure_uids(engine, Stage.SEGMENT, "SeriesFailed", {"9.1", "9.2", "9.3"}) == {
        "9.1"}
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC)
    rec.record_run(HarvestRunRecord("PACS", start, end, RunStatus.COMPLETED))
    rec.record_run(HarvestRunRecord("PACS", end, end, RunStatus.COMPLETED, failed=1))
    rec.record_run(HarvestRunRecord("OTHER", start, start, RunStatus.COMPLETED))
    assert completed_windows(engine, "PACS") == {(start, end)}
    engine.dispose()


def test_segmentation_of_unknown_annotation_is_refused(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    good = series_results(1)
    bad = SeriesResults(good.study, good.series, good.presentation_states, good.annotations,
                        (SegmentationRecord(
                            gsps_sop_instance_uid=good.presentation_states[0].sop_instance_uid,
                            annotation_index=99, model_name="classical"),))
    with pytest.raises(ValueError, match="annotation 99"):
        Recorder(engine).record_series_results(bad)
    assert table_counts(engine)["studies"] == 0  # the whole transaction rolled back
    engine.dispose()


def _record_many(url: str, barrier, count: int) -> None:
    """Worker: record the same ``count`` series as the other worker, starting together."""
    engine = open_catalog(url, migrate=False)
    rec = Recorder(engine)
    barrier.wait(timeout=60)
    for n in range(count):
        rec.record_series_results(series_results(n, patient=f"PAT-{n % 7}"))
        rec.record_failure(FailureRecord(Stage.SEGMENT, f"uid-{n % 5}", "ValueError", "x"))
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_processes_upserting_the_same_results(backend: str, request: pytest.FixtureRequest,
                                                  tmp_path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'shared.sqlite'}")
    engine = open_catalog(url)
    if backend == "postgresql":  # another test of this session may have left rows
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE study, patient_pseudonym, failure, harvest_run CASCADE"))
    engine.dispose()  # no pooled connection crosses the fork
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    count = 20
    workers = [ctx.Process(target=_record_many, args=(url, barrier, count)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    counts = table_counts(engine)
    assert counts["studies"] == count and counts["series"] == count
    assert counts["annotations"] == 2 * count and counts["segmentations"] == 2 * count
    with engine.connect() as conn:
        assert len(conn.execute(select(PatientPseudonym.id)).all()) == 7
        assert len(set(conn.execute(select(Segmentation.annotation_id)).scalars())) == 2 * count
        attempts = conn.execute(text("SELECT sum(attempts) FROM failure")).scalar_one()
    assert counts["failures"] == 5 and attempts == 2 * count
    engine.dispose()


def _open_new_catalog(url: str, barrier) -> None:
    """Worker: open (and so migrate) a catalog nobody has opened yet, with the others at once."""
    barrier.wait(timeout=60)
    open_catalog(url).dispose()


@pytest.fixture()
def new_pg_url() -> Iterator[str]:
    """A PostgreSQL database that has never been migrated, dropped afterwards."""
    with fresh_pg_database("sam2ct_new") as url:
        yield url


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_processes_opening_a_new_catalog_at_once_migrate_it_once(
        backend: str, request: pytest.FixtureRequest, tmp_path) -> None:
    """Segment workers open the catalog together: one migrates, the others then find it done."""
    url = (request.getfixturevalue("new_pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'new.sqlite'}")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    workers = [ctx.Process(target=_open_new_catalog, args=(url, barrier)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert current_revision(url) == ScriptDirectory.from_config(alembic_config()).get_current_head()


# --- the trigger-kept segmentation summary ----------------------------------------------------

def _summary_and_truth(engine) -> tuple[dict, dict]:
    """(summary groups with n > 0, the same groups computed by GROUP BY over segmentation)."""
    seg = Segmentation.__table__
    month = month_expression(engine.dialect.name, seg.c.study_date)
    with engine.connect() as conn:
        truth = {(k, m, v, str(getattr(s, "value", s)), mo): (n, total) for k, m, v, s, mo, n, total
                 in conn.execute(select(seg.c.kind, seg.c.model_name, seg.c.model_version,
                                        seg.c.status, month, func.count(),
                                        func.sum(seg.c.volume_ml))
                                 .group_by(seg.c.kind, seg.c.model_name, seg.c.model_version,
                                           seg.c.status, month))}
        summary = {(k, m, v, str(getattr(s, "value", s)), mo): (n, total)
                   for k, m, v, s, mo, n, total in conn.execute(select(
                       SegmentationSummary.__table__).where(SegmentationSummary.n != 0))}
    return summary, truth


def _assert_summary_exact(engine) -> None:
    summary, truth = _summary_and_truth(engine)
    assert summary.keys() == truth.keys()
    for key, (n, total) in truth.items():
        assert summary[key][0] == n, key
        assert summary[key][1] == pytest.approx(total, rel=1e-9, abs=1e-9), key


def _random_results(rng: random.Random, n: int) -> SeriesResults:
    """Series ``n`` with random kind, volume, date (or none), model and status."""
    return series_results(
        n, kind=rng.choice(["line", "arrow", "bidirectional"]), volume=rng.uniform(0.1, 50),
        day=rng.choice([date(2024, 12, 31), date(2025, 1, 1), date(2025, 2, 14), None]),
        model=rng.choice(["classical", "sam2ct"]), status=rng.choice(list(SegStatus)),
        annotations=rng.randint(1, 3))


def test_summary_equals_group_by_after_random_overwrites(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rng = random.Random(5)
    for _ in range(40):  # 8 series recorded ~5 times each: overwrites change every key column
        rec.record_series_results(_random_results(rng, rng.randrange(8)))
    rec.record_study(StudyRecord("1.2.826.0.1.3", "PAT-SECRET-1", date(2023, 7, 9)))  # re-date
    _assert_summary_exact(engine)
    summary, _ = _summary_and_truth(engine)
    assert sum(n for n, _ in summary.values()) == table_counts(engine)["segmentations"] > 8
    with engine.begin() as conn:  # deletes (cascading from the study) subtract
        conn.execute(Study.__table__.delete().where(Study.study_instance_uid == "1.2.826.0.1.3"))
    _assert_summary_exact(engine)
    engine.dispose()


def test_stats_from_summary_equal_stats_over_segmentations(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rng = random.Random(7)
    for n in range(12):
        rec.record_series_results(_random_results(rng, n))
    whole_months = [CatalogFilter(), CatalogFilter(kind="line"),
                    CatalogFilter(since=date(2025, 1, 1)), CatalogFilter(until=date(2024, 12, 31)),
                    CatalogFilter(since=date(2025, 1, 1), until=date(2025, 2, 28),
                                  model="sam2ct", status=SegStatus.OK)]
    for f in whole_months:
        assert summary_answers(f)
        from_summary = stats(engine, f)
        with engine.connect() as conn:  # the same figures grouped over the base table
            rows = conn.execute(_segmentation_stats(f)).all()
        assert list(from_summary.segmentations) == [n for *_, n, _ in rows], f
        assert list(from_summary.total_volume_ml) == pytest.approx([t for *_, t in rows]), f
    assert not summary_answers(CatalogFilter(since=date(2025, 1, 2)))
    assert not summary_answers(CatalogFilter(until=date(2025, 2, 27)))
    assert not summary_answers(CatalogFilter(min_volume_ml=1.0))
    assert summary_answers(CatalogFilter(until=date.max))  # no overflow on the last day
    engine.dispose()


def test_migration_backfills_the_summary_and_rebuild_agrees(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    rng = random.Random(11)
    for n in range(6):
        rec.record_series_results(_random_results(rng, n))
    before, _ = _summary_and_truth(engine)
    downgrade(engine, "0001")  # back to 0001 (no summary), then up again: backfilled
    assert "segmentation_summary" not in inspect(engine).get_table_names()
    upgrade(engine)
    _assert_summary_exact(engine)
    rows = query_rows(engine)  # the GSPS UID and index copied onto the segmentations again
    assert rows and all(r.gsps_sop_instance_uid == f"{r.study_instance_uid}.2" for r in rows)
    assert sorted({r.annotation_index for r in rows}) == [0, 1, 2]
    with engine.begin() as conn:
        assert rebuild(conn) == len(_summary_and_truth(engine)[1])
    after, _ = _summary_and_truth(engine)
    assert after.keys() == before.keys()
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    engine.dispose()


# --- a GSPS drawn on two series ----------------------------------------------------------------

def two_series_results(first: str, second: str) -> tuple[SeriesResults, SeriesResults]:
    """One study, GSPS "…9.2" with annotations 0, 1 on series ``first`` and 2, 3 on ``second``
    (3 is skipped: no segmentation), as the two jobs of the harvest record them."""
    study, gsps = "1.2.826.0.1.9", "1.2.826.0.1.9.2"

    def job(series: str, indexes: tuple[int, ...], segmented: tuple[int, ...]) -> SeriesResults:
        anns = tuple(AnnotationRecord(gsps, i, "line", series, slice_index=i,
                                      skip_reason=None if i in segmented else "outside volume")
                     for i in indexes)
        segs = tuple(SegmentationRecord(gsps_sop_instance_uid=gsps, annotation_index=i,
                                        model_name="classical", model_version="1.0",
                                        volume_ml=1.0 + i) for i in segmented)
        return SeriesResults(StudyRecord(study, "PAT-SECRET-9", date(2025, 4, 1)),
                             SeriesRecord(series, study, "CT", "CHEST", 50, (2.0, 0.7, 0.7)),
                             (PresentationStateRecord(gsps, series, "/g/9.dcm"),), anns, segs)

    return job(first, (0, 1), (0, 1)), job(second, (2, 3), (2,))


def _annotation_series(engine) -> tuple[dict[int, str], str]:
    """(GSPS index -> its annotation's series UID, the presentation state's series UID)."""
    with engine.connect() as conn:
        by_index = dict(conn.execute(select(Annotation.gsps_index, Series.series_instance_uid)
                                     .join(Series, Annotation.series_id == Series.id)).all())
        ps_series = conn.execute(select(Series.series_instance_uid).join(
            PresentationState, PresentationState.series_id == Series.id)).scalar_one()
    return by_index, ps_series


def test_annotations_of_one_gsps_keep_their_own_series(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    a, b = "1.2.826.0.1.9.1", "1.2.826.0.1.9.3"
    on_a, on_b = two_series_results(a, b)
    rec.record_series_results(on_a)
    rec.record_series_results(on_b)
    expected = {0: a, 1: a, 2: b, 3: b}
    assert _annotation_series(engine) == (expected, a)  # the GSPS keeps its first series
    assert {r.annotation_index: r.series_instance_uid for r in query_rows(engine)} == \
        {0: a, 1: a, 2: b}
    counts = table_counts(engine)
    rec.record_series_results(on_b)  # recorded again, in the other order: no row, no move
    rec.record_series_results(on_a)
    assert table_counts(engine) == counts
    assert counts["presentation_states"] == 1 and counts["annotations"] == 4
    assert _annotation_series(engine) == (expected, a)
    wrong = SeriesResults(on_a.study, on_a.series, on_a.presentation_states, on_b.annotations)
    with pytest.raises(ValueError, match=f"annotation 2 of presentation state .* on series {b}"):
        rec.record_series_results(wrong)
    engine.dispose()


def test_migration_from_0002_backfills_annotation_series(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    rec = Recorder(engine)
    a, b = "1.2.826.0.1.9.1", "1.2.826.0.1.9.3"
    on_a, on_b = two_series_results(a, b)
    rec.record_series_results(on_b)  # B first: the GSPS's series is B
    rec.record_series_results(on_a)
    counts = table_counts(engine)
    downgrade(engine, "0002")
    assert "series_id" not in {c["name"] for c in inspect(engine).get_columns("annotation")}
    assert table_counts(engine) == counts  # rebuilding annotation deleted no segmentation
    upgrade(engine)
    assert current_revision(engine) == HEAD and table_counts(engine) == counts
    # segmented annotations get their segmentations' series; 3 (none) its GSPS's series
    assert _annotation_series(engine) == ({0: a, 1: a, 2: b, 3: b}, b)
    _assert_summary_exact(engine)
    if engine.dialect.name == "sqlite":  # a rebuild under enforced foreign keys is refused
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            with pytest.raises(ValueError, match="foreign keys are on"):
                command.downgrade(cfg, "0002")
        assert table_counts(engine) == counts
    engine.dispose()


def test_month_key() -> None:
    assert month_key(date(2025, 3, 14)) == 202503 and month_key(None) == 0


def _overwrite_many(url: str, barrier, seed: int, count: int) -> None:
    """Worker: record the same series as the other worker with its own random values."""
    engine = open_catalog(url, migrate=False)
    rec = Recorder(engine)
    rng = random.Random(seed)
    barrier.wait(timeout=60)
    for _ in range(count):
        rec.record_series_results(_random_results(rng, rng.randrange(6)))
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_summary_exact_under_two_concurrent_writers(backend: str, request: pytest.FixtureRequest,
                                                     tmp_path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'shared.sqlite'}")
    engine = open_catalog(url)
    if backend == "postgresql":  # another test of this session may have left rows
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE study, patient_pseudonym, failure, harvest_run CASCADE"))
    _assert_summary_exact(engine)  # TRUNCATE emptied the summary too
    engine.dispose()  # no pooled connection crosses the fork
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_overwrite_many, args=(url, barrier, seed, 25))
               for seed in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    _assert_summary_exact(engine)
    assert 0 < table_counts(engine)["segmentations"] <= 6 * 3 * 2  # series, annotations, models
    engine.dispose()


class _Orig(Exception):
    """Stands in for the driver's error: only its SQLSTATE matters to the retry."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_transaction_retried_only_for_deadlock_victims(tmp_path) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    rec, calls = Recorder(engine), []

    def deadlocked_once(conn) -> str:
        calls.append(1)
        if len(calls) == 1:  # PostgreSQL chose this transaction as the deadlock victim
            raise OperationalError("UPDATE segmentation_summary", {}, _Orig("40P01"))
        return "done"

    assert rec._transaction(deadlocked_once) == "done" and len(calls) == 2

    def always_deadlocked(conn) -> str:
        calls.append(1)
        raise OperationalError("UPDATE", {}, _Orig("40P01"))

    calls.clear()
    with pytest.raises(OperationalError):
        rec._transaction(always_deadlocked)
    assert len(calls) == 3

    def other_error(conn) -> str:
        calls.append(1)
        raise OperationalError("INSERT", {}, _Orig("23505"))

    calls.clear()
    with pytest.raises(OperationalError):
        rec._transaction(other_error)
    assert len(calls) == 1
    engine.dispose()


def test_segmentation_writers_queue_on_postgresql(pg_url: str) -> None:
    engine = open_catalog(pg_url)
    with engine.begin() as conn:  # another test of this session may have left rows
        conn.execute(text("TRUNCATE study, patient_pseudonym, failure, harvest_run CASCADE"))
    holder = engine.connect()
    holder.begin()
    _serialise_segmentation_writers(holder)  # a writer mid-transaction holds the lock
    writer = threading.Thread(target=Recorder(engine).record_series_results,
                              args=(series_results(1),))
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive()  # the second writer waits for the first to commit
    holder.commit()
    holder.close()
    writer.join(timeout=30)
    assert not writer.is_alive() and table_counts(engine)["segmentations"] == 2
    _assert_summary_exact(engine)
    engine.dispose()
