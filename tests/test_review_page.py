"""The review page: `sam2ct review` driven in a real headless Chromium (Debian's, through
Playwright) over a catalog made by `sam2ct segment`; the review functions on SQLite and
PostgreSQL; no patient identifier on the page unless asked for."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_port
from sqlalchemy import update

from db import Recorder, open_catalog
from db.models import Segmentation
from db.records import (
    AnnotationRecord,
    PresentationStateRecord,
    ReviewScore,
    SegmentationRecord,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)
from db.reviews import (
    QueueFilter,
    patient_ids,
    queue_choices,
    record_review,
    review_history,
    review_queue,
)

pytest_plugins = ["flow_fixtures", "review_fixtures"]  # fixtures: pg_url, segmented

REVIEWER = "dr-test"
#: Where screenshots of the page and of the report are also saved (for docs/), when set.
SCREENSHOTS = os.environ.get("SAM2CT_SCREENSHOTS")


# --- the review functions, on both catalogs -----------------------------------------------------

def _results(n: int, kinds: tuple[str, ...], day: date) -> SeriesResults:
    study, series, gsps = f"1.2.826.0.9.{n}", f"1.2.826.0.9.{n}.1", f"1.2.826.0.9.{n}.2"
    anns = tuple(AnnotationRecord(gsps, i, kind, series, slice_index=5,
                                  points_voxel=((10.0, 20.0, 5), (30.0, 40.0, 5)))
                 for i, kind in enumerate(kinds))
    segs = tuple(SegmentationRecord(
        gsps_sop_instance_uid=gsps, annotation_index=i, model_name="classical",
        seg_sop_instance_uid=f"{gsps}.9", segment_number=i + 1, seg_path=f"/seg/{gsps}.dcm",
        voxels=100, volume_ml=1.0 + i, bbox=(4, 10, 10, 6, 40, 30)) for i in range(len(kinds)))
    return SeriesResults(StudyRecord(study, f"PAT-{n}", day),
                         SeriesRecord(series, study, slices=20, storage_path=f"/ct/{n}"),
                         (PresentationStateRecord(gsps, series, f"/gsps/{n}.dcm"),), anns, segs)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reviews_keep_history_and_order_the_queue(backend: str, request, tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    engine = open_catalog(url)
    try:
        recorder = Recorder(engine)
        recorder.record_series_results(_results(1, ("line", "arrow", "line"), date(2026, 1, 5)))
        recorder.record_series_results(_results(2, ("bidirectional",), date(2026, 2, 1)))
        ids = [i.segmentation_id for i in review_queue(engine)]
        assert len(ids) == 4
        flagged = ids[2]  # flags as the quality checks record them
        with engine.begin() as conn:
            conn.execute(update(Segmentation).where(Segmentation.id == flagged).values(
                quality_flags=[{"code": "fov", "reason": "touches the field of view"},
                               {"code": "leak", "reason": "40 slices"}], flag_count=2))
            conn.execute(update(Segmentation).where(Segmentation.id != flagged).values(
                quality_flags=[], flag_count=0))

        queue = review_queue(engine)
        assert queue[0].segmentation_id == flagged and queue[0].flag_count == 2  # flagged first
        assert [i.segmentation_id for i in queue[1:]] == [i for i in ids if i != flagged]
        assert queue[0].flags[1]["reason"] == "40 slices"
        assert [i.segmentation_id for i in review_queue(engine, QueueFilter(flagged=True))] == [
            flagged]

        t0 = datetime.now(UTC) - timedelta(seconds=1)
        first = record_review(engine, ids[0], "acceptable", REVIEWER)
        record_review(engine, ids[0], ReviewScore.MAJOR_EDITS, "dr-other", "  rim missed  ")
        record_review(engine, flagged, ReviewScore.UNUSABLE, REVIEWER)
        history = review_history(engine, ids[0])
        assert [(e.score, e.reviewer, e.note) for e in history] == [
            (ReviewScore.MAJOR_EDITS, "dr-other", "rim missed"),
            (ReviewScore.ACCEPTABLE, REVIEWER, None)]
        assert all(t0 <= e.reviewed_at <= datetime.now(UTC) for e in history)
        assert history[1].reviewed_at == first.reviewed_at  # stored with its zone, read back

        by_id = {i.segmentation_id: i for i in review_queue(engine)}
        assert by_id[ids[0]].score is ReviewScore.MAJOR_EDITS  # the newest row is the score
        assert by_id[ids[0]].reviewer == "dr-other" and by_id[ids[1]].score is None
        unreviewed = review_queue(engine, QueueFilter(unreviewed=True))
        assert {i.segmentation_id for i in unreviewed} == set(ids) - {ids[0], flagged}
        assert [i.kind for i in review_queue(engine, QueueFilter(
            kind="line", since=date(2026, 1, 1), until=date(2026, 1, 31)))] == ["line", "line"]
        assert review_queue(engine, QueueFilter(since=date(2026, 2, 1)))[0].kind == "bidirectional"
        assert queue_choices(engine) == {"kinds": ["arrow", "bidirectional", "line"],
                                         "models": ["classical"]}

        for bad, match in [({"score": "fine"}, "'score'"), ({"reviewer": " "}, "'reviewer'"),
                           ({"note": "x" * 4001}, "'note'"),
                           ({"segmentation_id": 10**6}, "no such segmentation")]:
            args = {"segmentation_id": ids[1], "score": "minor", "reviewer": REVIEWER, **bad}
            with pytest.raises(ValueError, match=match):
                record_review(engine, **args)
        assert review_history(engine, ids[1]) == []
    finally:
        engine.dispose()


# --- what the page shows, without a browser ------------------------------------------------------

@pytest.mark.slow
def test_identifiers_only_when_asked(segmented, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from flows.review.app import create_app

    engine = open_catalog(segmented.url)
    item = review_queue(engine)[0]
    history = review_history(engine, item.segmentation_id)
    patient = patient_ids(engine, [item.patient_pseudonym])[item.patient_pseudonym]
    assert patient in segmented.patient_ids
    identifiers = [patient, item.study_instance_uid, item.series_instance_uid,
                   item.patient_pseudonym]
    secrets = (*segmented.patient_ids, *segmented.patient_names, *identifiers[1:])
    try:
        for show in (False, True):
            app = create_app(engine, REVIEWER, tmp_path / str(show), show_identifiers=show)
            with TestClient(app, base_url="http://127.0.0.1:8765") as client:
                page = client.get(f"/segmentation/{item.segmentation_id}")
                assert page.status_code == 200
                shown = [s for s in secrets if s in page.text]
                assert sorted(shown) == (sorted(identifiers) if show else [])
                assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
                assert client.get(f"/segmentation/{item.segmentation_id}/slice/9999.png"
                                  ).status_code == 404
                answer = client.post(f"/api/segmentations/{item.segmentation_id}/review",
                                     content='{"score": "minor"}',
                                     headers={"content-type": "text/plain"})
                assert answer.status_code == 422  # only JSON: no cross-site form posts
        assert review_history(engine, item.segmentation_id) == history
    finally:
        engine.dispose()


def test_a_port_in_use_is_one_line(tmp_path: Path, capsys) -> None:
    import socket

    from flows.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["review", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}", "--port",
                     str(port), "--reviewer", REVIEWER])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"sam2ct review: error: cannot listen on 127.0.0.1:{port} - ")


# --- the page in a real browser ------------------------------------------------------------------

@pytest.fixture()
def review_server(segmented, tmp_path: Path) -> Iterator[str]:
    """`sam2ct review` on a free loopback port over the segmented catalog; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAM2CT_", "PREFECT_"))}
    log = (tmp_path / "review.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows", "review", "--catalog", segmented.url, "--port",
         str(port), "--reviewer", REVIEWER], cwd=REPO, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, (tmp_path / "review.log").read_text()
            try:
                if httpx.get(base + "/static/review.css", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the review page did not come up in 120 s"
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=30) == 0, (tmp_path / "review.log").read_text()
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


def _browser(playwright):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium (Debian package chromium) is not installed")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    return playwright.chromium.launch(executable_path=chromium, args=args)


def _slice_shown(page) -> None:
    page.wait_for_function("() => { const i = document.getElementById('slice');"
                           " return i.complete && i.naturalWidth > 0; }")


@pytest.mark.slow
def test_two_segmentations_scored_by_keyboard(segmented, review_server: str,
                                              tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    engine = open_catalog(segmented.url)
    expected = [i.segmentation_id for i in review_queue(engine, QueueFilter(with_mask=True))]
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(review_server + "/")
        # the queue, flagged first, opened at its first case
        queue = page.locator("#queue li").evaluate_all("els => els.map(e => +e.dataset.id)")
        assert queue == expected and len(queue) == 7
        first, second, third = queue[:3]
        assert page.url == f"{review_server}/segmentation/{first}"
        _slice_shown(page)
        # slices scroll with the keys: another slice is drawn from the series and the SEG
        src = page.get_attribute("#slice", "src")
        page.keyboard.press("ArrowDown")
        page.wait_for_function(f"() => document.getElementById('slice').src.indexOf('{src}') < 0")
        _slice_shown(page)
        assert len(page.locator(".keyslice img").all()) >= 2  # key slices beside the prompt one
        # score the first with a note, then the second: each key saves and opens the next
        page.keyboard.press("e")
        page.keyboard.type("rim missed")
        page.keyboard.press("Escape")
        page.keyboard.press("2")
        page.wait_for_url(f"{review_server}/segmentation/{second}")
        page.keyboard.press("3")
        page.wait_for_url(f"{review_server}/segmentation/{third}")
        text = page.content()
        for secret in (*segmented.patient_ids, *segmented.patient_names):
            assert secret not in text
        # the queue shows the scores; a flagged case shows its flags
        page.goto(f"{review_server}/segmentation/{first}")
        assert page.locator(f'#queue li[data-id="{first}"] .score').inner_text() == "minor"
        assert "rim missed" in page.locator("ol.history").inner_text()
        if SCREENSHOTS:
            _slice_shown(page)
            page.screenshot(path=str(Path(SCREENSHOTS) / "review-page.png"))
        assert errors == []
        browser.close()
    now = datetime.now(UTC)
    try:
        scored = {i: review_history(engine, i) for i in (first, second, third)}
    finally:
        engine.dispose()
    assert [(e.score, e.reviewer, e.note) for e in scored[first]] == [
        (ReviewScore.MINOR_EDITS, REVIEWER, "rim missed")]
    assert [(e.score, e.reviewer, e.note) for e in scored[second]] == [
        (ReviewScore.MAJOR_EDITS, REVIEWER, None)]
    assert scored[third] == []
    assert all(t0 <= e.reviewed_at <= now for e in scored[first] + scored[second])


@pytest.mark.slow
def test_report_opens_in_the_browser_with_every_image(segmented, tmp_path: Path) -> None:
    """The demo's HTML report, opened from disk: every preview it links loads."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from flows.artifacts import RunSummary, report_cases, write_html_report

    engine = open_catalog(segmented.url)
    try:
        cases = report_cases(engine)
    finally:
        engine.dispose()
    summary = RunSummary("2026-01-05", "2026-01-06", "DEMOPACS", found=len(cases),
                         segmented=len(cases))
    report = write_html_report(tmp_path / "report.html", summary, "SAM2CT harvest demo", cases,
                               f"sam2ct review --catalog {segmented.url}")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(report.as_uri())
        loaded = page.locator("img").evaluate_all(
            "els => els.map(e => e.complete && e.naturalWidth > 0)")
        assert loaded == [True] * len(cases)
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "report.png"))
        browser.close()
