"""End-to-end harvest throughput on the demo data, on CPU, with the share of time per stage.

Synthetic studies (the demo's defaults) are served by Orthanc on loopback; the nightly flow runs
on a temporary Prefect server with a SQLite catalog. Printed: studies per hour, seconds and share
per stage (retrieve, parse, segment, SEG write, catalog), the pipeline's own overhead, and the
ratio of the harvest's wall time to a peer measured in the same run: the same segmentation done
by a plain loop over the local files (no PACS, no Prefect, no catalog).

Overhead = wall - transfer - model. Model is the wall time of the segmenter's calls only (with
several segment workers, the time in which at least one of them ran a model call). Transfer is measured by a
second peer after the harvest, against the same PACS: the same C-FINDs and C-MOVEs (GSPS series,
then CT series, as many associations at once as the harvest may use) with no Prefect, no slots and
no catalog. The flow segments each CT series as soon as it arrived, while later ones are still
being retrieved, so part of the transfer can hide behind segmentation; the retrieve stage is the
time the flow waited on the PACS. A second figure therefore counts that whole wait as transfer
(wall - retrieve stage - model): the pipeline's own work on the critical path, hidden transfer or
not. Both are printed, with the load average before and after and how busy the machine's
cores were during the harvest (every process: ours, Orthanc, Prefect's server).

    .venv/bin/python bench/bench_pipeline.py [--studies 2] [--size 512] [--slices N]
        [--segment-workers N] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc launcher lives with the tests


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_busy_seconds() -> float:
    """Core-seconds this machine has spent busy since boot (all processes, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def warm_up_api() -> float:
    """Seconds of one API call made before the clock: a freshly started Prefect server answers
    its first request late (lazy start-up), which a long-running server has long paid."""
    from prefect.client.orchestration import get_client

    t0 = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.api_version()
    return time.perf_counter() - t0


def direct_peer(root: Path, manifest: dict, model: str) -> float:
    """Seconds for the bare pipeline over local files: load, segment, write SEGs."""
    from dicom_io.volume import load_series
    from flows.segment_series import read_gsps_files, segment_series
    from sam2ct.registry import choose_segmenter

    t0 = time.perf_counter()
    choice = choose_segmenter(model)
    for study in manifest["studies"]:
        volume = load_series(root / study["ct_dir"])
        parsed, failures = read_gsps_files([root / g["file"] for g in study["gsps"]])
        segment_series(volume, parsed, choice, root.parent / "direct" / study["name"], failures)
    return time.perf_counter() - t0


def transfer_peer(opts, start: dt.date, end: dt.date, ct_series: list[tuple[str, str]]) -> float:
    """Seconds for the harvest's transfers alone: C-FIND the GSPS, C-MOVE their series and the
    CT series into a fresh staging folder, ``max_associations`` at once, without Prefect."""
    from concurrent.futures import ThreadPoolExecutor

    from dicom_io.pacs import discover_gsps, retrieve
    from flows.tasks import storage_scp

    opts = opts.model_copy(update={"staging_dir": opts.staging_dir.parent / "transfer-peer"})
    pacs, local = opts.pacs_settings(), opts.local_ae()
    t0 = time.perf_counter()
    with storage_scp(opts) as scp, ThreadPoolExecutor(opts.max_associations) as pool:
        found = discover_gsps(pacs, local, start, end)
        by_series: dict[tuple[str, str], list] = {}
        for g in found:
            by_series.setdefault((g.study_instance_uid, g.series_instance_uid), []).append(g)

        def fetch(study: str, series: str, expected: list | None) -> None:
            retrieve(pacs, local, opts.staging_dir, study, series, expected=expected,
                     scp=scp).raise_if_incomplete()

        list(pool.map(lambda kv: fetch(*kv[0], kv[1]), by_series.items()))
        list(pool.map(lambda key: fetch(*key, None), ct_series))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="classical")
    ap.add_argument("--segment-workers", type=int, default=None,
                    help="segment worker processes (default: the flow's default; 0: in-process)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from pacs_peers import OrthancPeer
    from prefect.testing.utilities import prefect_test_harness

    from dicom_io.synth import make_studies
    from flows.harvest import nightly_harvest
    from flows.options import HarvestOptions

    root = work / "studies"
    manifest = json.loads(make_studies(root, args.studies, args.seed, size=args.size,
                                       slices=args.slices).read_text())
    dates = sorted(dt.datetime.strptime(s["study_date"], "%Y%m%d").date()
                   for s in manifest["studies"])
    store_port = _free_port()
    peer = OrthancPeer(work / "orthanc", _free_port(), _free_port(), "SAM2CT", store_port).start()
    try:
        peer.upload(sorted(root.glob("study-*/ct/*.dcm")) + sorted(root.glob("study-*/gsps/*.dcm")))
        opts = HarvestOptions(pacs=peer.address, store_port=store_port,
                              catalog_url=f"sqlite:///{work / 'catalog.sqlite'}",
                              staging_dir=work / "staging", output_dir=work / "seg",
                              model=args.model, segment_workers=args.segment_workers)
        with prefect_test_harness(server_startup_timeout=180):
            first_call = warm_up_api()
            t0, busy0 = time.perf_counter(), cpu_busy_seconds()
            summary = nightly_harvest(dates[0], dates[-1], opts)
            wall = time.perf_counter() - t0
            busy = cpu_busy_seconds() - busy0
        transfer = transfer_peer(opts, dates[0], dates[-1],
                                 [(s["study_instance_uid"], s["series_instance_uid"])
                                  for s in manifest["studies"]])
    finally:
        peer.stop()
    direct = direct_peer(root, manifest, args.model)
    figures = report(summary, wall, transfer, direct, args)
    cores = os.cpu_count() or 1
    print(f"CPU busy during the harvest: {busy:.1f} core-s = {100 * busy / (cores * wall):.0f} % "
          f"of {cores} cores x wall (every process: ours, Orthanc, Prefect's server)")
    figures["cpu_busy_core_s"] = round(busy, 2)
    print(f"(before the clock: the fresh Prefect server's first API call took {first_call:.2f} s; "
          "the product's server runs all along)")
    print(f"load average (1, 5, 15 min) before {_load(load_before)}, after "
          f"{_load(os.getloadavg())} ({os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


#: Stage keys of the run summary and how the report names them.
STAGES = {"retrieve": "retrieve (flow waits on the PACS)", "parse": "parse + volume load",
          "segment": "segment (model calls)", "seg_write": "SEG write + measures + previews",
          "catalog": "catalog"}


def report(summary: dict, wall: float, transfer: float, direct: float,
           args: argparse.Namespace) -> dict:
    """Print throughput, per-stage shares and the overhead, and the ratio to the direct peer;
    return the figures."""
    stages = {k: summary["seconds"].get(k, 0.0) for k in STAGES}
    other = max(0.0, wall - sum(stages.values()))
    print(f"studies {args.studies} ({args.size} px, model {args.model}), GSPS "
          f"{summary['found']}, segments {summary['segmented']}, failed {summary['failed']}")
    print(f"harvest wall {wall:.1f} s -> {3600 * args.studies / wall:.0f} studies/hour (CPU)")
    rows = {STAGES[k]: v for k, v in stages.items()}
    rows["orchestration (Prefect, rest)"] = other
    if summary["model_busy_s"] < stages["segment"] - 0.01:
        print("  (segment workers ran side by side: their stages are summed over the workers, "
              "so shares add up to more than 100 % and 'rest' is what is left, if anything)")
    for name, seconds in rows.items():
        print(f"  {name:34s} {seconds:7.2f} s  {100 * seconds / wall:5.1f} %")
    waited = stages["retrieve"]
    print(f"transfer (same C-FIND/C-MOVEs without Prefect, measured after): {transfer:.2f} s = "
          f"{100 * transfer / wall:.1f} %; the flow waited {waited:.2f} s on the PACS "
          f"({max(0.0, waited - transfer):.2f} s more than the transfer: Prefect tasks and PACS "
          f"slots; {max(0.0, transfer - waited):.2f} s less: transfer hidden behind segmenting)")
    model = summary["model_busy_s"]  # the union of the workers' model calls
    if model < stages["segment"] - 0.01:
        print(f"model calls ran side by side on several workers: {stages['segment']:.2f} s in "
              f"all, {model:.2f} s of wall time with at least one running")
    overhead = wall - transfer - model
    own = wall - waited - model
    print(f"pipeline overhead (wall - transfer - model): {overhead:.1f} s = "
          f"{100 * overhead / wall:.1f} % of wall (goal < 10 %); counting the whole retrieve "
          f"stage as transfer: {own:.1f} s = {100 * own / wall:.1f} %")
    print(f"peer: plain loop over local files {direct:.1f} s; harvest / peer = "
          f"{wall / direct:.2f}")
    return {"studies": args.studies, "wall_s": round(wall, 3), "transfer_s": round(transfer, 3),
            "direct_s": round(direct, 3), "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "orchestration_s": round(other, 3), "overhead_pct": round(100 * overhead / wall, 1),
            "own_work_pct": round(100 * own / wall, 1), "model_wall_s": round(model, 3),
            "studies_per_hour": round(3600 * args.studies / wall)}


if __name__ == "__main__":
    main()
