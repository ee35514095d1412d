"""Reviewed datasets: catalog query, stats and export filtered by the latest review score and by
the automatic quality flags, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import fresh_pg_database
from sqlalchemy import insert, select, text

from db import CatalogFilter, Recorder, open_catalog, query_frame, query_rows, stats
from db.models import Review, Segmentation
from db.queries import acceptability, review_scores, summary_answers
from db.records import (
    AnnotationRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)
from flows.cli import main

VOLUME = ("volume", "volume 27.0 mL is 3.10x the sphere of the drawn 26 mm line")
FOV = ("fov-border", "the mask touches the first slice of the series")

#: (name, model, version, flags, review scores oldest first) of each segmentation
CASES = [
    ("clean-acceptable", "classical", "1.2.0", (), ["acceptable"]),
    ("clean-minor", "classical", "1.2.0", (), ["minor"]),
    ("clean-rescored-major", "classical", "1.2.0", (), ["acceptable", "major"]),
    ("flagged-unusable", "classical", "1.2.0", (VOLUME,), ["unusable"]),
    ("flagged-rescored-minor", "classical", "1.2.0", (VOLUME, FOV), ["unusable", "minor"]),
    ("flagged-unreviewed", "classical", "1.2.0", (FOV,), []),
    ("unchecked-acceptable", "classical", "1.1.0", None, ["acceptable"]),
    ("unchecked-unreviewed", "classical", "1.1.0", None, []),
    ("sam2ct-acceptable", "sam2ct", "1.0", (), ["acceptable"]),
    ("sam2ct-unusable", "sam2ct", "1.0", (), ["unusable"]),
]


def _record(rec: Recorder, n: int, name: str, model: str, version: str, flags,
            seg_path: str | None = None, series_dir: str | None = None,
            segment_number: int = 1, patient: str | None = None) -> str:
    """One study / series / GSPS / annotation / segmentation named ``name``; its GSPS UID."""
    study, series, gsps = f"1.2.826.0.7.{n}", f"1.2.826.0.7.{n}.1", f"1.2.826.0.7.{n}.2"
    rec.record_series_results(SeriesResults(
        StudyRecord(study, patient or f"PAT-{n}", date(2025, 3, 1 + n)),
        SeriesRecord(series, study, "CT", "CHEST", 20, (3.0, 0.8, 0.8), "ACME",
                     series_dir or f"/s/{n}"),
        (PresentationStateRecord(gsps, series),),
        (AnnotationRecord(gsps, 0, "line", series, text=name),),
        (SegmentationRecord(gsps_sop_instance_uid=gsps, annotation_index=0, model_name=model,
                            model_version=version, seg_sop_instance_uid=f"{gsps}.9",
                            segment_number=segment_number, seg_path=seg_path or f"/o/{n}.dcm",
                            voxels=100, volume_ml=1.0 + n, quality_flags=flags),)))
    return gsps


def _review(engine, gsps: str, scores: list[str]) -> None:
    """Score the segmentation of ``gsps`` with each of ``scores`` in turn (re-scoring adds a
    row; the last one counts), all at the same time so only the order of rows decides."""
    when = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        seg_id = conn.execute(select(Segmentation.id).where(
            Segmentation.gsps_sop_instance_uid == gsps)).scalar_one()
        for score in scores:
            conn.execute(insert(Review).values(segmentation_id=seg_id, score=score,
                                               reviewer="tester", reviewed_at=when))


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database for this module, dropped afterwards."""
    with fresh_pg_database("sam2ct_review") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path_factory) -> dict:
    """The CASES in a catalog on each backend: {"url", "gsps": name -> GSPS UID}."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('review') / 'catalog.sqlite'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = open_catalog(url)
    rec = Recorder(engine)
    gsps = {}
    for n, (name, model, version, flags, scores) in enumerate(CASES, start=1):
        gsps[name] = _record(rec, n, name, model, version, flags)
        _review(engine, gsps[name], scores)
    engine.dispose()
    return {"url": url, "gsps": gsps}


def _names(catalog: dict, **where) -> set[str]:
    by_uid = {uid: name for name, uid in catalog["gsps"].items()}
    engine = open_catalog(catalog["url"], migrate=False)
    try:
        return {by_uid[r.gsps_sop_instance_uid]
                for r in query_rows(engine, CatalogFilter(**where))}
    finally:
        engine.dispose()


def test_review_filter_uses_the_latest_score(catalog: dict) -> None:
    assert _names(catalog, review=("acceptable", "minor")) == {
        "clean-acceptable", "clean-minor", "flagged-rescored-minor", "unchecked-acceptable",
        "sam2ct-acceptable"}
    assert _names(catalog, review=("major",)) == {"clean-rescored-major"}
    assert _names(catalog, review=("unusable",)) == {"flagged-unusable", "sam2ct-unusable"}
    assert _names(catalog, review=("none",)) == {"flagged-unreviewed", "unchecked-unreviewed"}
    assert _names(catalog, review=("none", "major")) == {
        "flagged-unreviewed", "unchecked-unreviewed", "clean-rescored-major"}


def test_flag_filters_leave_unchecked_rows_out(catalog: dict) -> None:
    assert _names(catalog, flagged=True) == {"flagged-unusable", "flagged-rescored-minor",
                                             "flagged-unreviewed"}
    assert _names(catalog, flagged=False) == {"clean-acceptable", "clean-minor",
                                              "clean-rescored-major", "sam2ct-acceptable",
                                              "sam2ct-unusable"}
    assert _names(catalog, review=("acceptable", "minor"), flagged=False, model="classical") \
        == {"clean-acceptable", "clean-minor"}


def test_rows_carry_flags_and_latest_score(catalog: dict) -> None:
    engine = open_catalog(catalog["url"], migrate=False)
    rows = {r.gsps_sop_instance_uid: r for r in query_rows(engine)}
    frame = query_frame(engine, CatalogFilter(flagged=True))
    engine.dispose()
    rescored = rows[catalog["gsps"]["flagged-rescored-minor"]]
    assert rescored.review_score == "minor" and rescored.flag_count == 2
    assert rescored.quality_flags == [{"code": c, "reason": r} for c, r in (VOLUME, FOV)]
    unchecked = rows[catalog["gsps"]["unchecked-unreviewed"]]
    assert (unchecked.review_score, unchecked.flag_count, unchecked.quality_flags) == \
        (None, None, None)
    assert rows[catalog["gsps"]["clean-minor"]].quality_flags == []
    assert sorted(frame.flag_count) == [1, 1, 2]
    assert {"review_score", "quality_flags", "flag_count"} <= set(frame.columns)


def test_stats_under_review_filters_and_the_acceptability_rate(catalog: dict) -> None:
    engine = open_catalog(catalog["url"], migrate=False)
    reviewed = CatalogFilter(review=("acceptable", "minor"))
    assert not summary_answers(reviewed) and not summary_answers(CatalogFilter(flagged=False))
    assert int(stats(engine, reviewed).segmentations.sum()) == 5
    assert int(stats(engine, CatalogFilter(flagged=True)).segmentations.sum()) == 3
    frame = acceptability(engine).set_index(["model_name", "model_version"])
    only_flagged = acceptability(engine, CatalogFilter(flagged=True))
    engine.dispose()
    current = frame.loc[("classical", "1.2.0")]
    # latest scores: acceptable, minor, major, unusable, minor, (none)
    assert (current.segmentations, current.checked, current.flagged, current.reviewed) == \
        (6, 6, 3, 5)
    assert (current.acceptable, current.minor, current.major, current.unusable) == (1, 2, 1, 1)
    assert current.acceptability == pytest.approx(3 / 5)
    older = frame.loc[("classical", "1.1.0")]
    assert (older.checked, older.reviewed, older.acceptability) == (0, 1, 1.0)
    assert frame.loc[("sam2ct", "1.0")].acceptability == pytest.approx(0.5)
    assert list(only_flagged.reviewed) == [2] and list(only_flagged.acceptability) == [0.5]


def test_catalog_cli_filters_and_stats(catalog: dict, capsys) -> None:
    url = catalog["url"]
    assert main(["catalog", "query", "--review", "acceptable,minor", "--no-flags",
                 "--format", "json", "--catalog", url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["gsps_sop_instance_uid"] for r in rows} == {
        catalog["gsps"][n] for n in ("clean-acceptable", "clean-minor", "sam2ct-acceptable")}
    assert main(["catalog", "query", "--flagged", "--format", "json", "--catalog", url]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["catalog", "stats", "--format", "json", "--catalog", url]) == 0
    document = json.loads(capsys.readouterr().out)
    rates = {(g["model_name"], g["model_version"]): g["acceptability"]
             for g in document["acceptability"]}
    assert rates[("classical", "1.2.0")] == pytest.approx(0.6)
    assert main(["catalog", "stats", "--catalog", url]) == 0
    assert "acceptability" in capsys.readouterr().out


def test_bad_review_filters_are_one_line_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="Invalid review filter great"):
        review_scores("acceptable,great")
    assert review_scores(["Minor", "acceptable", "minor"]) == ("acceptable", "minor")
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    for argv in (["--review", "great"], ["--review", ","], ["--flagged", "--no-flags"]):
        assert main(["catalog", "query", *argv, "--catalog", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err


# --- a reviewed dataset ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def segs(tmp_path_factory) -> dict:
    """Three small synthetic studies, each lesion's truth written as a SEG of its own."""
    from dicom_io.nifti import read_nifti
    from dicom_io.seg import AlgorithmSpec, SegmentSpec, write_seg
    from dicom_io.synth import make_studies
    from dicom_io.volume import load_series

    root = tmp_path_factory.mktemp("reviewed")
    manifest = json.loads(make_studies(root / "studies", studies=3, seed=5, size=64,
                                       slices=24).read_text())
    series = []
    for n, study in enumerate(manifest["studies"]):
        ct_dir = root / "studies" / study["ct_dir"]
        volume = load_series(ct_dir)
        lesion = study["lesions"][0]
        mask = read_nifti(root / "studies" / lesion["truth"])[0].astype(bool)
        gsps = f"1.2.826.0.8.{n}.2"
        seg = write_seg(volume, [mask], [SegmentSpec.for_annotation(gsps, 0, "line", "lesion")],
                        AlgorithmSpec("classical", "1.2.0"), root / "segs")
        series.append({"ct_dir": ct_dir, "seg": seg, "uid": volume.series_instance_uid,
                       "study": volume.study_instance_uid})
    return {"root": root, "series": series}


@pytest.mark.slow  # writes three small synthetic studies and their SEGs (a few seconds)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_export_of_a_reviewed_dataset_holds_exactly_the_chosen_cases(
        backend: str, segs: dict, tmp_path: Path, request: pytest.FixtureRequest,
        capsys) -> None:
    from db.export.manifest import Manifest

    url = (request.getfixturevalue("pg_database") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    engine = open_catalog(url)
    if backend == "postgresql":  # the module's database: start from an empty catalog
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE study, patient_pseudonym, review, segmentation, "
                              "segmentation_summary CASCADE"))
    rec = Recorder(engine)
    plan = [((), ["acceptable"]), ((VOLUME,), ["minor"]), ((), ["minor", "unusable"])]
    for n, (entry, (flags, scores)) in enumerate(zip(segs["series"], plan, strict=True)):
        # real UIDs of the synthetic series, so the export reads their files
        rec.record_series_results(SeriesResults(
            StudyRecord(entry["study"], f"PAT-{n}", date(2025, 1, 1 + n)),
            SeriesRecord(entry["uid"], entry["study"], "CT", None, 24, (3.0, 1.0, 1.0),
                         "ACME", str(entry["ct_dir"])),
            (PresentationStateRecord(f"1.2.826.0.8.{n}.2", entry["uid"]),),
            (AnnotationRecord(f"1.2.826.0.8.{n}.2", 0, "line", entry["uid"]),),
            (SegmentationRecord(gsps_sop_instance_uid=f"1.2.826.0.8.{n}.2", annotation_index=0,
                                model_name="classical", model_version="1.2.0",
                                seg_sop_instance_uid=entry["seg"].stem, segment_number=1,
                                seg_path=str(entry["seg"]), voxels=10, volume_ml=1.0,
                                quality_flags=flags),)))
        _review(engine, f"1.2.826.0.8.{n}.2", scores)
    engine.dispose()

    def exported(*filters: str) -> set[str]:
        out = tmp_path / "-".join(f.strip("-") for f in filters)
        code = main(["export", "--format", "nifti", "--out", str(out), "--no-progress",
                     "--catalog", url, *filters])
        capsys.readouterr()
        assert code == 0
        return {row.series_instance_uid for row in Manifest(out).rows.values()}

    uids = [entry["uid"] for entry in segs["series"]]
    assert exported("--review", "acceptable,minor") == {uids[0], uids[1]}
    assert exported("--review", "acceptable,minor", "--no-flags") == {uids[0]}
    assert exported("--flagged") == {uids[1]}
    assert exported("--review", "unusable") == {uids[2]}
    assert main(["export", "--format", "nifti", "--out", str(tmp_path / "none"), "--catalog",
                 url, "--review", "major"]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert not (tmp_path / "none" / "manifest.csv").exists()
