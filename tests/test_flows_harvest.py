"""The harvest flows end to end: real Orthanc, real PostgreSQL, a real (temporary) Prefect server.

One Prefect test harness for the whole module (it is slow to start). Synthetic studies are loaded
into Orthanc; the nightly flow harvests a window of them into SEGs and the catalog.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, dciodvfy_errors, free_port
from pydicom.uid import generate_uid
from sqlalchemy import func, select

pytestmark = pytest.mark.slow
pytest_plugins = ["flow_fixtures"]  # fixtures: harness, pg_url

WINDOW = (dt.date(2026, 1, 5), dt.date(2026, 1, 7))  # studies 1-3; study 4 (01-08) lies outside
STUDY_1 = (dt.date(2026, 1, 5), dt.date(2026, 1, 5))  # study 1 only: a shorter run




@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("studies")
    manifest = json.loads(make_studies(out, studies=4, seed=11, size=96, slices=24).read_text())
    manifest["root"] = out
    for study in manifest["studies"]:  # every third GSPS (4 of 10, all kinds): a quicker run
        study["gsps"] = study["gsps"][::3]
    manifest["orphan"] = _orphan_gsps(out, manifest["studies"][3])
    return manifest


def _orphan_gsps(out: Path, study: dict) -> dict:
    """A GSPS of study 4 drawn on a series the PACS does not hold: an explained failure."""
    ds = pydicom.dcmread(out / study["gsps"][0]["file"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    path = out / "orphan.dcm"
    ds.save_as(path, enforce_file_format=True)
    return {"file": "orphan.dcm", "sop_instance_uid": ds.SOPInstanceUID}


@pytest.fixture(scope="module")
def store_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, studies, store_port):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    from pacs_peers import OrthancPeer

    peer = OrthancPeer(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(),
                       "SAM2CT", store_port, verbose=True).start()
    root: Path = studies["root"]
    peer.upload(sorted(root.glob("study-*/ct/*.dcm")) + [root / "orphan.dcm"]
                + [root / g["file"] for s in studies["studies"] for g in s["gsps"]])
    yield peer
    peer.stop()




def _options(tmp: Path, orthanc, store_port: int, catalog: str, **kw):
    from flows.options import HarvestOptions

    return HarvestOptions(pacs=orthanc.address, ae_title="SAM2CT", store_port=store_port,
                          catalog_url=catalog, staging_dir=tmp / "staging",
                          output_dir=tmp / "seg", model="classical", **kw)


def _files(*folders: Path) -> set[Path]:
    return {p for f in folders for p in f.rglob("*") if p.is_file()}


def _window_gsps(studies: dict, window=WINDOW) -> dict[str, str]:
    """GSPS SOP Instance UID -> study name, for the studies dated inside ``window``."""
    lo, hi = (d.strftime("%Y%m%d") for d in window)
    return {g["sop_instance_uid"]: s["name"] for s in studies["studies"]
            if lo <= s["study_date"] <= hi for g in s["gsps"]}


def peak_associations(log: str, calling_aet: str = "SAM2CT") -> int:
    """Most associations from ``calling_aet`` open at once, from Orthanc's --verbose log lines."""
    open_now = peak = 0
    for line in log.splitlines():
        if f"Association Received from AET {calling_aet} " in line:
            open_now += 1
            peak = max(peak, open_now)
        elif f"Finishing association with AET {calling_aet} " in line:
            open_now -= 1
    return peak


def _check_catalog(engine, studies: dict, window=WINDOW) -> dict[str, int]:
    """Every GSPS of the window is catalogued, every annotation a segment or explained."""
    from db.models import Annotation, PresentationState, Segmentation

    expected = _window_gsps(studies, window)
    with engine.connect() as conn:
        ps = set(conn.execute(select(PresentationState.sop_instance_uid)).scalars())
        anns = conn.execute(select(Annotation.id, Annotation.skip_reason)).all()
        segs = conn.execute(select(Segmentation.annotation_id, Segmentation.status,
                                   Segmentation.reason, Segmentation.seg_path)).all()
    assert ps == set(expected), "catalogued GSPS differ from the window's GSPS"
    by_ann = {a: (status, reason, path) for a, status, reason, path in segs}
    for ann_id, skip in anns:
        if ann_id in by_ann:
            status, reason, path = by_ann[ann_id]
            status = getattr(status, "value", status)
            assert status == "ok" and Path(path).is_file() or reason, (ann_id, status)
        else:
            assert skip, f"annotation {ann_id} has neither a segmentation nor a skip reason"
    return Counter(getattr(s, "value", s) for _, s, _, _ in segs)


def test_nightly_harvest_end_to_end_with_limit_and_rerun(harness, orthanc, studies, store_port,
                                                         pg_url, tmp_path):
    from db import open_catalog
    from db.queries import open_failures, table_counts
    from flows.harvest import backfill, nightly_harvest, outcome_from_catalog
    from flows.segment_jobs import SeriesJob

    opts = _options(tmp_path, orthanc, store_port, pg_url, max_associations=2)
    offset = orthanc.log.stat().st_size
    t0 = time.perf_counter()
    summary = nightly_harvest(*WINDOW, opts)
    with orthanc.log.open() as fh:
        fh.seek(offset)
        log = fh.read()
    peak = peak_associations(log)
    print(f"\nfirst run {time.perf_counter() - t0:.1f} s, peak associations {peak} "
          f"({log.count('Association Received from AET SAM2CT')} in all), "
          f"stages {summary['seconds']}")
    assert 1 <= peak <= 2, f"Orthanc saw {peak} simultaneous associations from us (limit 2)"

    engine = open_catalog(pg_url)
    assert summary["found"] == len(_window_gsps(studies)) == 12
    assert summary["failed_by_stage"] == {}
    statuses = _check_catalog(engine, studies)
    assert statuses["ok"] == summary["segmented"] > 0
    segs = sorted((tmp_path / "seg").rglob("*.dcm"))
    assert segs and len(segs) == len(set(summary["seg_paths"]))
    t0 = time.perf_counter()
    for seg in segs:
        assert dciodvfy_errors(seg) == [], seg.name
    print(f"dciodvfy {len(segs)} SEGs {time.perf_counter() - t0:.1f} s")
    assert summary["previews"] and all(Path(p).is_file() for p in summary["previews"])
    # the run's HTML report in the output folder links every SEG of the run, and how to review
    report = tmp_path / "seg" / "reports" / f"harvest-{WINDOW[0]}-{WINDOW[1]}.html"
    assert summary["report"] == str(report)
    page = report.read_text()
    linked = {(report.parent / h).resolve() for h in re.findall(r'class="seg" href="([^"]+)"', page)}
    assert linked == {Path(p).resolve() for p in summary["seg_paths"]}
    assert "sam2ct review --catalog" in page

    # what a remote (GPU pool) batch reports back: read from the catalog, the same counts
    jobs = [SeriesJob(study_instance_uid=st["study_instance_uid"],
                      series_instance_uid=st["series_instance_uid"], series_dir="",
                      gsps_files=["x"]) for st in studies["studies"][:3]]
    assert sum(outcome_from_catalog(engine, j).ok for j in jobs) == summary["segmented"]

    counts, files = table_counts(engine), _files(tmp_path / "staging", tmp_path / "seg")
    t0 = time.perf_counter()
    again = nightly_harvest(*WINDOW, opts)
    print(f"re-run {time.perf_counter() - t0:.1f} s")
    assert again["already_done"] == again["found"] == summary["found"]
    assert again["segmented"] == 0 and again["retrieved_series"] == 0
    assert table_counts(engine) == counts, "re-running the window added catalog rows"
    assert _files(tmp_path / "staging", tmp_path / "seg") == files, "re-running added files"

    # backfill: the window above is complete and skipped; the next one (study 4 and a GSPS on a
    # series the PACS lacks) is harvested, the orphan catalogued as an explained failure ...
    end = WINDOW[1] + dt.timedelta(days=3)
    first = backfill(WINDOW[0], end, chunk_days=3, options=opts)
    assert [(r["window_start"], r["found"], r["segmented"]) for r in first] == [
        ("2026-01-08", 5, 4)]
    assert first[0]["failed_by_stage"] == {"retrieve": 1}
    failures = open_failures(engine)
    assert list(failures["stage"]) == ["retrieve"] and "holds no instance" in failures.iloc[0][
        "message"]
    # ... so that window is not complete: the next backfill retries only the failed item
    second = backfill(WINDOW[0], end, 3, opts)
    assert [(r["already_done"], r["segmented"]) for r in second] == [(4, 0)]
    assert open_failures(engine).iloc[0]["attempts"] == 2


def test_killed_run_is_finished_by_rerun_without_duplicates(harness, orthanc, studies,
                                                            store_port, pg_url, tmp_path):
    from db import open_catalog
    from db.models import PresentationState, Segmentation
    from flows.harvest import nightly_harvest
    from flows.tasks import limit_names

    env = {**os.environ, "PREFECT_API_URL": harness, "SAM2CT_DATA_DIR": str(tmp_path / "data"),
           "SAM2CT_MODEL": "classical", "SAM2CT_AE_TITLE": "SAM2CT",
           "SAM2CT_STORE_PORT": str(store_port),
           # one series at a time: when the first SEG appears, two series are still to do
           "SAM2CT_SEGMENT_WORKERS": "1"}
    cmd = [sys.executable, "-m", "flows", "harvest", "--from", str(WINDOW[0]), "--to",
           str(WINDOW[1]), "--pacs", orthanc.address, "--catalog", pg_url, "--staging",
           str(tmp_path / "staging"), "--out", str(tmp_path / "seg")]
    log = tmp_path / "killed-harvest.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "seg").rglob("*.dcm")) and time.monotonic() < deadline:
        assert proc.poll() is None, ("the harvest ended before it could be killed:\n"
                                     + log.read_text()[-3000:])
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle: some SEGs written, most not
    proc.wait(10)
    with open_catalog(pg_url).connect() as conn:
        before = conn.execute(select(func.count()).select_from(PresentationState)).scalar_one()
    print(f"\nkilled with {before} of {len(_window_gsps(studies, WINDOW))} GSPS catalogued")
    assert before < len(_window_gsps(studies, WINDOW)), "the run ended before the kill"
    _release_stale_slots(limit_names(orthanc.aet)[0])

    summary = nightly_harvest(*WINDOW, _options(tmp_path, orthanc, store_port, pg_url,
                                                     store_back=True))
    assert summary["failed_by_stage"] == {}
    engine = open_catalog(pg_url)
    _check_catalog(engine, studies, WINDOW)  # nothing missing
    with engine.connect() as conn:
        seg_uids = conn.execute(select(Segmentation.seg_sop_instance_uid,
                                       func.count(func.distinct(Segmentation.seg_path)))
                                .group_by(Segmentation.seg_sop_instance_uid)).all()
    assert all(n == 1 for _, n in seg_uids)
    files = sorted((tmp_path / "seg").rglob("*.dcm"))
    assert len(files) == len({u for u, _ in seg_uids if u}), "a SEG file is duplicated"
    for path in files:  # written to a temp name and renamed: no SEG is ever half-written
        assert pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG"
    # the re-run stored the SEGs it made back to the PACS (C-STORE, store_back=True)
    stored = orthanc.rest("/tools/find", json.dumps(
        {"Level": "Instance", "Query": {"Modality": "SEG"}}).encode(), "POST")
    assert len(stored) == len(summary["seg_paths"]) > 0


def _release_stale_slots(name: str) -> None:
    """What an operator (or Prefect's lease expiry, after >= 60 s) does for a killed process."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def test_peak_associations_counts_overlaps_from_orthanc_log_lines():
    log = "\n".join([
        "I1 CommandDispatcher.cpp:333] (dicom) Association Received from AET SAM2CT on IP x",
        "I2 CommandDispatcher.cpp:333] (dicom) Association Received from AET SAM2CT on IP x",
        "I3 CommandDispatcher.cpp:333] (dicom) Association Received from AET OTHER on IP x",
        "I4 CommandDispatcher.cpp:929] (dicom) Finishing association with AET SAM2CT on IP x",
        "I5 CommandDispatcher.cpp:333] (dicom) Association Received from AET SAM2CT on IP x",
        "I6 CommandDispatcher.cpp:333] (dicom) Association Received from AET SAM2CT on IP x",
    ])
    assert peak_associations(log) == 3
    assert peak_associations(log, "OTHER") == 1


def test_held_pacs_slots_are_taken_once_and_shared_by_this_process(harness, tmp_path):
    """A flow's held slots cost the server one request, cap this process's associations at what
    is held, and go back to the server on close; outside a hold each slot comes from the
    server."""
    import threading

    from prefect.client.orchestration import get_client

    from flows.options import HarvestOptions
    from flows.tasks import ensure_pacs_limits, limit_names, pacs_slot, pacs_slots

    opts = HarvestOptions(pacs="HOLDTEST@127.0.0.1:1", catalog_url="sqlite://",
                          staging_dir=tmp_path, output_dir=tmp_path, max_associations=2)
    ensure_pacs_limits(opts)

    def active() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(
                limit_names("HOLDTEST")[0]).active_slots

    lock, now, peak, seen = threading.Lock(), [0], [0], []

    def associate() -> None:
        with pacs_slot(opts):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.3)
            with lock:
                now[0] -= 1

    with pacs_slots(opts, 1) as slots:  # one of the limit's two: the other stays free
        threads = [threading.Thread(target=associate) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        seen.append(active())
        for t in threads:
            t.join(60)
        assert slots.open and active() == 1
    assert seen == [1], "a thread took a slot of the server while this process held one"
    assert peak[0] == 1
    assert active() == 0
    with pacs_slot(opts):
        assert active() == 1
    assert active() == 0


# --- a GSPS drawn on two series; the segment deployment on a real worker; the export flow ------

@pytest.fixture(scope="module")
def two_series(orthanc, tmp_path_factory) -> dict:
    """The study of multi_series.py (2 CT series, 1 shared GSPS) on the module's Orthanc."""
    from multi_series import make_two_series_study

    study = make_two_series_study(tmp_path_factory.mktemp("two-series"))
    orthanc.upload(study["files"])
    return study


def _check_two_series(engine, study: dict) -> dict[str, list[str]]:
    """Each annotation of the shared GSPS is catalogued once, segmented on its own series, and
    each series has its SEG (dciodvfy-clean); return series UID -> its SEG paths."""
    from db.models import Annotation, PresentationState, Segmentation, Series

    with engine.connect() as conn:
        anns = conn.execute(select(Annotation.gsps_index).join(PresentationState).where(
            PresentationState.sop_instance_uid == study["shared_uid"])).scalars().all()
        segs = conn.execute(select(Series.series_instance_uid, Segmentation.status,
                                   Segmentation.seg_path, Segmentation.annotation_index)
                            .join(Series, Segmentation.series_id == Series.id)
                            .where(Segmentation.gsps_sop_instance_uid == study["shared_uid"])
                            ).all()
    assert sorted(anns) == list(range(sum(study["on_series"].values()))), "annotations lost"
    assert sorted(i for *_, i in segs) == sorted(anns), "an annotation segmented twice or never"
    assert Counter(s for s, *_ in segs) == study["on_series"]
    paths: dict[str, list[str]] = {}
    for series, status, path, _ in segs:
        assert getattr(status, "value", status) == "ok", (series, status)
        paths.setdefault(series, []).append(path)
    for series, seg_paths in paths.items():
        for path in set(seg_paths):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series
            assert dciodvfy_errors(Path(path)) == [], path
    return paths


def _broken_slice(study: dict, staging: Path) -> Path:
    """A slice of series 2 without pixel data, put where its retrieval lands: loading fails."""
    second = study["series"][1]
    ds = pydicom.dcmread(next(f for f in study["files"] if f.parent.name == "ct2"))
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = staging / study["study_instance_uid"] / second / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_shared_gsps_harvested_per_series_then_exported(harness, orthanc, two_series, store_port,
                                                       pg_url, tmp_path):
    import SimpleITK as sitk

    from db import open_catalog
    from db.queries import open_failures
    from flows.export_flow import export_dataset
    from flows.harvest import nightly_harvest

    day, (_, second) = two_series["study_date"], two_series["series"]
    # segmenting in the flow's own process (the other harvest tests use worker processes)
    opts = _options(tmp_path, orthanc, store_port, pg_url, segment_workers=0)
    # first run: series 2 cannot be loaded (a slice without pixel data lies in its staging)
    broken = _broken_slice(two_series, opts.staging_dir)
    summary = nightly_harvest(day, day, opts)
    assert summary["failed_by_stage"] == {"load": 1} and summary["segmented"] == 1
    engine = open_catalog(pg_url)
    held = open_failures(engine)
    assert set(held["object_uid"]) == {second, two_series["shared_uid"]}  # the GSPS is held
    # next run: the GSPS is not "already done"; both series are done, the failures resolved
    broken.unlink()
    summary = nightly_harvest(day, day, opts)
    assert summary["found"] == 1 and summary["already_done"] == 0, summary
    assert summary["failed_by_stage"] == {}
    assert summary["retrieved_series"] == 2 and summary["segmented"] == 2
    assert open_failures(engine).empty
    _check_two_series(engine, two_series)
    assert nightly_harvest(day, day, opts)["already_done"] == 1

    # the export flow over that catalog: one case per series, image and label on one grid
    raw = "nnUNet_raw/Dataset501_SAM2CT"
    for fmt, image_dir, label_dir, suffix in (("nnunet", f"{raw}/imagesTr", f"{raw}/labelsTr",
                                               "_0000"), ("nifti", "images", "labels", "")):
        out = tmp_path / fmt
        result = export_dataset(out=str(out), fmt=fmt, catalog_url=pg_url)
        assert (result["cases"], result["written"], result["failed"]) == (2, 2, 0), result
        labels = sorted((out / label_dir).glob("*.nii.gz"))
        assert len(labels) == 2
        for label_path in labels:
            case = label_path.name.removesuffix(".nii.gz")
            image = sitk.ReadImage(str(out / image_dir / f"{case}{suffix}.nii.gz"))
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
            assert image.GetSize() == label.shape[::-1] and image.GetSize()[2] == 16
            assert set(map(int, label.ravel())) == {0, 1}
        if fmt == "nnunet":
            assert json.loads((out / raw / "dataset.json").read_text())["numTraining"] == 2

    # reviewed datasets: the flow keeps only the series whose segmentation was scored acceptable
    from db.queries import query_rows
    from db.reviews import record_review

    first = min(query_rows(engine), key=lambda r: r.segmentation_id)
    record_review(engine, first.segmentation_id, "acceptable", "dr-test")
    result = export_dataset(out=str(tmp_path / "reviewed"), fmt="nifti", catalog_url=pg_url,
                            review=["acceptable"], flagged=None)
    assert (result["cases"], result["written"]) == (1, 1), result


def test_segment_deployment_runs_batches_on_a_process_worker(harness, orthanc, two_series,
                                                             store_port, pg_url, tmp_path):
    """The harvest sends each batch to the `segment` deployment; a real process worker runs it,
    reading the catalog URL from its own environment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from db import open_catalog
    from flows.harvest import nightly_harvest
    from flows.segment_flow import segment_batch

    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = segment_batch.from_source(str(REPO), "flows/segment_flow.py:segment_batch"
                                           ).deploy(name=pool, work_pool_name=pool,
                                                    print_next_steps=False)
    env = {**os.environ, "PREFECT_API_URL": harness, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "SAM2CT_DATABASE_URL": pg_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "worker", "start",
                               "--pool", pool, "--type", "process"], cwd=tmp_path, env=env,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    day = two_series["study_date"]
    opts = _options(tmp_path, orthanc, store_port, pg_url, batch_size=1,
                    segment_deployment=f"segment-batch/{pool}")
    try:
        summary = nightly_harvest(day, day, opts)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:  # a loaded machine: Prefect's worker can hang on
            os.killpg(worker.pid, signal.SIGKILL)  # its API calls while it shuts down (CI
            worker.wait(30)  # saw it); its shutdown is not what this test checks
    assert summary["failed_by_stage"] == {}, log.read_text()[-3000:]
    assert summary["segmented"] == 2
    _check_two_series(open_catalog(pg_url), two_series)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment])))
    assert len(runs) == 2  # batch_size 1: one run per series, each run by the worker
    assert all(r.state.is_completed() and r.infrastructure_pid for r in runs)
    ran = [job["series_instance_uid"] for r in runs for job in r.parameters["series"]]
    assert sorted(ran) == sorted(two_series["series"])
    assert all(r.parameters["catalog_url"] is None for r in runs)  # no URL stored in Prefect


def test_a_segment_worker_that_dies_fails_only_its_series(harness, studies, tmp_path):
    """The harvest's segment stage on one worker, killed while it segments the first series:
    that series is a catalogued segment failure (redone next run), the next series is
    segmented by a fresh worker."""
    import threading

    from conftest import forked_workers
    from prefect import flow

    from db.models import Failure
    from flows import harvest
    from flows.options import HarvestOptions
    from flows.segment_jobs import SeriesJob

    root = studies["root"]
    jobs = [SeriesJob(study_instance_uid=st["study_instance_uid"],
                      series_instance_uid=st["series_instance_uid"],
                      series_dir=str(root / st["ct_dir"]),
                      gsps_files=[str(root / g["file"]) for g in st["gsps"]])
            for st in studies["studies"][:2]]
    opts = HarvestOptions(pacs="DEADTEST@127.0.0.1:1", catalog_url=f"sqlite:///{tmp_path}/c.db",
                          staging_dir=tmp_path / "staging", output_dir=tmp_path / "seg",
                          model="classical", segment_workers=1)
    first_output = tmp_path / "seg" / jobs[0].study_instance_uid

    def kill_once_writing() -> None:
        deadline = time.monotonic() + 120
        while not first_output.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        for pid in forked_workers():
            os.kill(pid, signal.SIGKILL)

    @flow
    def segment_stage() -> tuple[dict, dict]:
        run = harvest._Run(opts, *STUDY_1)
        with harvest.segment_workers(opts, len(jobs)) as workers:
            killer = threading.Thread(target=kill_once_writing)
            killer.start()
            for outcome in harvest._segment(run, iter(jobs), len(jobs), workers):
                harvest._count(run, outcome)
            killer.join()
        return dict(run.summary.failed_by_stage), run.failed_series

    failed_by_stage, failed_series = segment_stage()
    assert failed_by_stage == {"segment": 1}
    assert failed_series == {jobs[0].series_instance_uid: "segment"}
    engine = harvest.catalog_engine(opts.catalog)
    with engine.connect() as conn:
        failures = conn.execute(select(Failure.object_uid, Failure.error_class)).all()
    assert failures == [(jobs[0].series_instance_uid, "BrokenProcessPool")]
    segs = sorted((tmp_path / "seg" / jobs[1].study_instance_uid).glob("*.dcm"))
    assert len(segs) == len(studies["studies"][1]["gsps"])


POISON_DAY = dt.date(2026, 3, 3)  # a day of its own: the poisoned study only


@pytest.fixture(scope="module")
def poisoned(orthanc, tmp_path_factory) -> dict:
    """One synthetic study (all 10 GSPS) on the module's Orthanc, one GSPS rewritten with
    ImageRotation = inf (as a DS value: a writer that got the VR wrong)."""
    from pydicom.dataelem import DataElement

    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("poisoned")
    manifest = json.loads(make_studies(out, studies=1, seed=5, size=96, slices=24,
                                       start_date=POISON_DAY).read_text())
    study = manifest["studies"][0]
    victim = out / study["gsps"][0]["file"]
    ds = pydicom.dcmread(victim)
    ds[0x00700042] = DataElement(0x00700042, "DS", "inf")
    ds.save_as(victim)
    orthanc.upload(sorted(out.glob("study-*/ct/*.dcm")) + [out / g["file"] for g in study["gsps"]])
    return {"study": study, "victim": study["gsps"][0]["sop_instance_uid"]}


def test_a_poisoned_gsps_is_one_recorded_failure_and_the_night_goes_on(
        harness, orthanc, poisoned, store_port, pg_url, tmp_path):
    from db import open_catalog
    from db.models import PresentationState
    from db.queries import open_failures
    from flows.harvest import nightly_harvest

    opts = _options(tmp_path, orthanc, store_port, pg_url)
    summary = nightly_harvest(POISON_DAY, POISON_DAY, opts)
    engine = open_catalog(pg_url)
    failures = open_failures(engine)
    with engine.connect() as conn:
        catalogued = set(conn.execute(select(PresentationState.sop_instance_uid)).scalars())
    good = {g["sop_instance_uid"] for g in poisoned["study"]["gsps"]} - {poisoned["victim"]}
    print(f"\npoisoned night: found {summary['found']}, segmented {summary['segmented']}, "
          f"failed by stage {summary['failed_by_stage']}, catalogued GSPS {len(catalogued)}")
    assert summary["found"] == 10 and catalogued == good and len(good) == 9
    assert summary["segmented"] >= 9 and summary["failed_by_stage"] == {"parse": 1}
    assert list(failures["stage"]) == ["parse"]
    assert "ImageRotation" in failures.iloc[0]["message"]
    assert "\n" not in failures.iloc[0]["message"]
