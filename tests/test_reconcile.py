"""Discovery that checks itself, and reconciliation of past windows against the catalog.

The checks, against a real pynetdicom C-FIND peer that loses matches the way pynetdicom's reactor
once stole responses (the first answers it gives at one level lack their last match), and
against the real Orthanc and dcmqrscp of the PACS fixtures. Reconciliation end to end: real
Orthanc, real PostgreSQL, a real (temporary) Prefect server and synthetic studies: a GSPS whose
rows were deleted from the catalog comes back; a clean window costs a few C-FINDs and no
retrieval, counted by Orthanc itself (its log line for each request).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicom_io.pacs import (
    IncompleteDiscoveryError,
    PacsSettings,
    discover_gsps,
    discover_window,
    find_studies,
)
from dicom_io.pacs.query import GSPS_SOP_CLASS

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures", "flow_fixtures"]  # corpus, local, orthanc, qrscp, peer; harness, pg_url
DAY = dt.date(2026, 1, 5)
JAN = (dt.date(2026, 1, 1), dt.date(2026, 1, 31))
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class OrthancRequests:
    """Requests from us that Orthanc logged since this object was made (its --verbose lines)."""

    def __init__(self, peer) -> None:
        self.peer, self.offset = peer, peer.log.stat().st_size

    def count(self, kind: str) -> int:
        with self.peer.log.open() as fh:
            fh.seek(self.offset)
            return fh.read().count(f"Incoming {kind} request from AET SAM2CT")


# --- the checks against a peer that loses matches ----------------------------------------------

class LossyPacs:
    """A real C-FIND SCP (pynetdicom, loopback) holding one study of ``DAY``: a CT series of 3
    instances and a PR series of 2 GSPS. Its first ``lose[level]`` answers at a level lack their
    last match; ``counts``: whether it returns the Number of ... Related attributes."""

    def __init__(self, lose: dict[str, int], counts: bool = True) -> None:
        self.lose, self.counts, self.answers = dict(lose), counts, 0
        self.study = generate_uid()
        self.series = {generate_uid(): ("CT", [(generate_uid(), CT_IMAGE) for _ in range(3)]),
                       generate_uid(): ("PR", [(generate_uid(), GSPS_SOP_CLASS)
                                               for _ in range(2)])}
        self.port = free_port()
        ae = AE(ae_title="LOSSY")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self.on_find)])

    @property
    def gsps_uids(self) -> set[str]:
        return {uid for modality, items in self.series.values() if modality == "PR"
                for uid, _ in items}

    @property
    def address(self) -> str:
        return f"LOSSY@127.0.0.1:{self.port}"

    def matches(self, query: Dataset) -> list[Dataset]:
        level = query.QueryRetrieveLevel
        if level == "STUDY":
            ds = self._match("STUDY", StudyDate=DAY.strftime("%Y%m%d"))
            if self.counts:
                ds.NumberOfStudyRelatedSeries = len(self.series)
            return [ds]
        if query.StudyInstanceUID != self.study:
            return []
        if level == "SERIES":
            out = []
            for uid, (modality, items) in self.series.items():
                ds = self._match("SERIES", SeriesInstanceUID=uid, Modality=modality)
                if self.counts:
                    ds.NumberOfSeriesRelatedInstances = len(items)
                out.append(ds)
            return out
        _, items = self.series.get(query.SeriesInstanceUID, ("", []))
        return [self._match("IMAGE", SeriesInstanceUID=query.SeriesInstanceUID,
                            SOPInstanceUID=uid, SOPClassUID=cls) for uid, cls in items]

    def _match(self, level: str, **values: object) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.StudyInstanceUID = level, self.study
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    def on_find(self, event):
        self.answers += 1
        found = self.matches(event.identifier)
        level = event.identifier.QueryRetrieveLevel
        if found and self.lose.get(level, 0) > 0:
            self.lose[level] -= 1
            found = found[:-1]
        for ds in found:
            yield 0xFF00, ds

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def lossy():
    peers: list[LossyPacs] = []

    def make(lose: dict[str, int], counts: bool = True) -> LossyPacs:
        peers.append(LossyPacs(lose, counts))
        return peers[-1]

    yield make
    for p in peers:
        p.stop()


def _settings(address: str) -> PacsSettings:
    return PacsSettings.parse(address, max_rate=100.0)


def test_a_lost_match_is_asked_again_against_the_pacs_counts(lossy, local) -> None:
    peer = lossy({"SERIES": 1, "IMAGE": 1})  # loses the PR series once, then a GSPS once
    found = discover_window(_settings(peer.address), local, DAY, DAY)
    assert found.complete and found.shortfalls == ()
    assert {g.sop_instance_uid for g in found.gsps} == peer.gsps_uids
    # studies twice (no count above them), series twice, the PR series' instances twice
    assert found.queries == peer.answers == 6


def test_without_counts_two_answers_must_agree(lossy, local) -> None:
    peer = lossy({"IMAGE": 1}, counts=False)  # as dcmqrscp: no Number of ... Related
    found = discover_window(_settings(peer.address), local, DAY, DAY)
    assert found.complete and {g.sop_instance_uid for g in found.gsps} == peer.gsps_uids
    # studies 2, series 2, instances 3 (the lossy answer, then two alike)
    assert found.queries == peer.answers == 7


def test_answers_that_never_add_up_make_an_incomplete_discovery(lossy, local) -> None:
    peer = lossy({"IMAGE": 99})
    found = discover_window(_settings(peer.address), local, DAY, DAY, attempts=3)
    pr = next(uid for uid, (m, _) in peer.series.items() if m == "PR")
    assert not found.complete and len(found.gsps) == 1  # what was found is kept
    assert found.shortfalls == (f"instances of series {pr}: 1 of the 2 the PACS counts, "
                                "after 3 queries",)
    with pytest.raises(IncompleteDiscoveryError, match=f"instances of series {pr}"):
        discover_gsps(_settings(peer.address), local, DAY, DAY)
    with pytest.raises(ValueError, match="'attempts' value 1"):
        discover_window(_settings(peer.address), local, DAY, DAY, attempts=1)


def test_real_peers_add_up_at_one_extra_cfind_with_counts(peer, local, corpus) -> None:
    """Orthanc returns the counts: the checks cost the window's study queries once more.
    dcmqrscp returns none: every question is asked twice. Orthanc's C-FINDs are counted by
    Orthanc (its log line for each request)."""
    pacs = _settings(peer.address)
    counted = OrthancRequests(peer) if peer.aet == "ORTHANC" else None
    studies = find_studies(pacs, local, *JAN)  # Orthanc's limit of 2 splits January
    study_queries = counted.count("Find") if counted else 1
    counted = OrthancRequests(peer) if counted else None
    found = discover_window(pacs, local, *JAN)
    assert found.complete, found.shortfalls
    assert {g.sop_instance_uid for g in found.gsps} >= set(corpus.a.gsps_uids
                                                          + corpus.b.gsps_uids)
    # unchecked: the study queries, one series query per study, one per PR series
    pr_series = len({g.series_instance_uid for g in found.gsps})
    unchecked = study_queries + len(studies) + pr_series
    if counted:
        assert found.queries == counted.count("Find") == unchecked + study_queries
    else:
        assert found.queries == 2 * unchecked
    print(f"\n{peer.aet}: {found.queries} C-FINDs checked, {unchecked} unchecked")


# --- reconciliation end to end -------------------------------------------------------------------



@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    """Two synthetic studies (Jan 5 and 6), each with every third of its GSPS (a quick run)."""
    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("studies")
    manifest = json.loads(make_studies(out, studies=2, seed=11, size=96, slices=24).read_text())
    manifest["root"] = out
    for study in manifest["studies"]:
        study["gsps"] = study["gsps"][::3]
    return manifest


@pytest.fixture(scope="module")
def store_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def synth_orthanc(tmp_path_factory, synth, store_port):
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    from pacs_fixtures import orthanc_loaded
    from pacs_peers import OrthancPeer

    peer = OrthancPeer(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(), "SAM2CT",
                       store_port, verbose=True).start()
    root: Path = synth["root"]
    files = (sorted(root.glob("study-*/ct/*.dcm"))
             + [root / g["file"] for s in synth["studies"] for g in s["gsps"]])
    peer.upload(files)
    orthanc_loaded(peer, len(files))
    yield peer
    peer.stop()




def _options(tmp: Path, address: str, store_port: int, catalog: str):
    from flows.options import HarvestOptions

    return HarvestOptions(pacs=address, ae_title="SAM2CT", store_port=store_port,
                          catalog_url=catalog, staging_dir=tmp / "staging",
                          output_dir=tmp / "seg", model="classical", segment_workers=0)


def _day_gsps(synth: dict, day: dt.date) -> set[str]:
    return {g["sop_instance_uid"] for s in synth["studies"]
            if s["study_date"] == day.strftime("%Y%m%d") for g in s["gsps"]}


def _unchecked_cfinds(peer, day: dt.date) -> int:
    """What discovering ``day`` took before the checks, from Orthanc's own index: one study
    query, one series query per study, one instance query per PR series."""
    def n(level: str, **query: str) -> int:
        body = json.dumps({"Level": level, "Query": {"StudyDate": day.strftime("%Y%m%d"),
                                                     **query}}).encode()
        return len(peer.rest("/tools/find", body, "POST"))

    return 1 + n("Study") + n("Series", Modality="PR")


def test_reconcile_brings_back_a_gsps_deleted_from_the_catalog(harness, synth_orthanc, synth,
                                                              store_port, pg_url, tmp_path):
    from sqlalchemy import delete, select

    from db import open_catalog
    from db.models import Annotation, PresentationState, Segmentation
    from flows.harvest import nightly_harvest
    from flows.reconcile import reconcile

    opts = _options(tmp_path, synth_orthanc.address, store_port, pg_url)
    expected = _day_gsps(synth, DAY)
    first = nightly_harvest(DAY, DAY, opts)
    assert first["found"] == len(expected) > 1 and first["failed_by_stage"] == {}, first
    assert first["segmented"] > 0

    # a clean window: a few C-FINDs (one more than an unchecked discovery), no retrieval
    seen = OrthancRequests(synth_orthanc)
    [clean] = reconcile(DAY, DAY, options=opts)
    assert clean["clean"] and clean["harvest"] is None, clean
    assert (clean["found"], clean["missing"]) == (len(expected), 0)
    assert seen.count("Move") == seen.count("Get") == 0
    assert seen.count("Find") == clean["queries"] == _unchecked_cfinds(synth_orthanc, DAY) + 1
    print(f"\nclean window of 1 study, {len(expected)} GSPS: {clean['queries']} C-FINDs")

    # one GSPS's rows deleted from the catalog (its annotations and segmentations cascade)
    engine = open_catalog(pg_url)
    with engine.connect() as conn:
        segmented = Counter(conn.execute(select(Segmentation.gsps_sop_instance_uid)).scalars())
        annotated = Counter(conn.execute(select(PresentationState.sop_instance_uid).join(
            Annotation)).scalars())
    lost = sorted(segmented)[0]  # a GSPS with segmentations
    with engine.begin() as conn:
        conn.execute(delete(PresentationState).where(PresentationState.sop_instance_uid == lost))
        assert not conn.execute(select(Segmentation.id).where(
            Segmentation.gsps_sop_instance_uid == lost)).first()
    shutil.rmtree(opts.staging_dir)  # staging is scratch: the GSPS must come from the PACS
    seen = OrthancRequests(synth_orthanc)
    [redone] = reconcile(DAY, DAY, options=opts)
    assert (redone["found"], redone["missing"], redone["clean"]) == (len(expected), 1, False)
    harvest = redone["harvest"]
    assert harvest["already_done"] == len(expected) - 1 and harvest["retrieved_gsps"] == 1
    assert harvest["failed_by_stage"] == {}, harvest
    assert seen.count("Move") >= 2  # the lost GSPS and the series it is drawn on
    with engine.connect() as conn:
        states = set(conn.execute(select(PresentationState.sop_instance_uid)).scalars())
        annotations = conn.execute(select(Annotation.id).join(PresentationState).where(
            PresentationState.sop_instance_uid == lost)).all()
        segmentations = conn.execute(select(Segmentation.id).where(
            Segmentation.gsps_sop_instance_uid == lost)).all()
    assert states == expected
    assert (len(annotations), len(segmentations)) == (annotated[lost], segmented[lost])
    # and the window is clean again
    [again] = reconcile(DAY, DAY, options=opts)
    assert again["clean"], again


def test_an_incomplete_discovery_leaves_the_window_to_be_redone(harness, lossy, store_port,
                                                                pg_url, tmp_path):
    """A PACS that keeps losing a PR series: the run is INCOMPLETE, not COMPLETED; its
    discover failure names the series; the backfill does not count the window as done."""
    from sqlalchemy import select

    from db import open_catalog
    from db.models import HarvestRun
    from db.queries import completed_windows, open_failures
    from db.records import RunStatus
    from flows.harvest import nightly_harvest
    from flows.options import window_bounds

    peer = lossy({"SERIES": 99})
    opts = _options(tmp_path, peer.address, free_port(), pg_url)
    summary = nightly_harvest(DAY, DAY, opts)
    assert summary["found"] == 0 and summary["failed_by_stage"] == {"discover": 1}
    engine = open_catalog(pg_url)
    with engine.connect() as conn:
        status = conn.execute(select(HarvestRun.status)).scalar_one()
    assert RunStatus(status) is RunStatus.INCOMPLETE
    failures = open_failures(engine)
    assert list(failures["object_uid"]) == [f"window {DAY}..{DAY}"]
    assert f"series of study {peer.study}: 1 of the 2" in failures.iloc[0]["message"]
    assert window_bounds(DAY, DAY) not in completed_windows(engine, "LOSSY")


# --- range, CLI and deployment -------------------------------------------------------------------

def test_range_defaults_to_the_last_days_up_to_yesterday() -> None:
    from flows.reconcile import reconcile_range

    today = dt.date(2026, 3, 1)
    assert reconcile_range(None, None, 7, today) == (dt.date(2026, 2, 22), dt.date(2026, 2, 28))
    assert reconcile_range(DAY, None, 7, today) == (DAY, DAY)
    with pytest.raises(ValueError, match="'days' value 0"):
        reconcile_range(None, None, 0, today)


def test_cli_and_nightly_deployment(capsys, tmp_path) -> None:
    from flows.cli import build_parser, main
    from flows.settings import Settings

    args = build_parser().parse_args(["reconcile", "--from", "2026-01-01", "--to", "2026-01-07",
                                      "--pacs", "P@h:104"])
    assert (args.start, args.end, args.chunk_days) == (JAN[0], dt.date(2026, 1, 7), 1)
    code = main(["reconcile", "--from", "2026-01-07", "--to", "2026-01-01", "--pacs", "P@h:104"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "before --from" in err[0]
    assert Settings(data_dir=tmp_path).reconcile_days == 7
    doc = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    deployment = next(d for d in doc["deployments"] if d["name"] == "reconcile")
    assert deployment["entrypoint"] == "flows/reconcile.py:reconcile"
    assert deployment["schedules"][0]["active"] and deployment["concurrency_limit"] == 1
