"""Benchmark: retrieve a 300-slice CT series from Orthanc on loopback, ours vs DCMTK, one run.

Ours: C-MOVE into our embedded storage SCP, and C-GET (pynetdicom). Peers: DCMTK ``movescu`` into
``storescp``, and DCMTK ``getscu``. Rounds alternate the four so that load from other processes on a
shared machine hits all alike; the best round of each is kept. Prints MB/s, instances/s and the
ratio of our throughput to DCMTK's (goal >= 0.9). Every retrieved set is checked complete.

The series: 300 copies of real LUNG1 slices (512x512, uncompressed) with fresh UIDs.

Note: DCMTK (the tools and Orthanc, which is built on it) leaves Nagle's algorithm on unless the
environment has TCP_NODELAY=1; on loopback that stalls DCMTK receivers ~45 ms per instance. Run
once plain and once with TCP_NODELAY=1 to compare against DCMTK at its best.

Usage: [TCP_NODELAY=1] .venv/bin/python bench/bench_pacs_retrieve.py [--slices 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the peers' launcher lives with the tests

from pacs_peers import OrthancPeer, make_study  # noqa: E402

from dicom_io.pacs import LocalAE, PacsSettings, StorageSCP, find_instances, retrieve  # noqa: E402

LUNG1 = REPO.parent / "shared" / "data" / "lung1"
DCMTK_AET = "STORESCP"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_series(out: Path, slices: int):
    """A study with one CT series of ``slices`` copies of LUNG1 slices (fresh UIDs)."""
    sources = sorted(LUNG1.glob("LUNG1-00*/ct/*.dcm"))
    picks = [sources[i % len(sources)] for i in range(slices)]
    return make_study(out, picks, "20260105", [])


def timed(action: Callable[[Path], int], out: Path) -> tuple[float, int]:
    out.mkdir(parents=True)
    start = time.perf_counter()
    action(out)
    elapsed = time.perf_counter() - start
    return elapsed, len(list(out.rglob("*.dcm"))) + len(list(out.glob("CT*")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dcmtk-pdu", type=int, default=None,
                        help="max PDU the DCMTK receivers announce (default: DCMTK's 16384)")
    parser.add_argument("--orthanc-pdu", type=int, default=None,
                        help="Orthanc's MaximumPduLength (default: Orthanc's 16384)")
    args = parser.parse_args()
    for tool in ("Orthanc", "movescu", "storescp", "getscu"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_pacs_retrieve: {tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    try:
        return run(work, args.slices, args.repeats, args.dcmtk_pdu, args.orthanc_pdu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, slices: int, repeats: int, dcmtk_pdu: int | None,
        orthanc_pdu: int | None) -> int:
    study = make_series(work / "data", slices)
    megabytes = sum(p.stat().st_size for p in study.ct_files) / 1e6
    ours_port, dcmtk_port = free_port(), free_port()
    orthanc = OrthancPeer(work / "orthanc", free_port(), free_port(), "SAM2CT", ours_port,
                          extra={"DicomModalities": {
                              "sam2ct": ["SAM2CT", "127.0.0.1", ours_port],
                              "dcmtk": [DCMTK_AET, "127.0.0.1", dcmtk_port]},
                              **({"MaximumPduLength": orthanc_pdu} if orthanc_pdu else {})}
                          ).start()
    storescp = None
    try:
        orthanc.upload(list(study.ct_files))
        pacs = PacsSettings.parse(orthanc.address, max_rate=100.0)
        local = LocalAE("SAM2CT", ours_port)
        expected = find_instances(pacs, local, study.study_uid, study.ct_series_uid)
        assert len(expected) == slices, f"Orthanc holds {len(expected)} of {slices} instances"
        keys = ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study.study_uid}",
                "-k", f"SeriesInstanceUID={study.ct_series_uid}"]
        pdu = ["--max-pdu", str(dcmtk_pdu)] if dcmtk_pdu else []
        peer = ["127.0.0.1", str(orthanc.dicom_port), "-aec", orthanc.aet, "-S", *pdu]
        scp = StorageSCP(local, work / "unused", extra_callers=[orthanc.aet]).start()
        dcmtk_out = work / "storescp"
        dcmtk_out.mkdir()
        storescp = subprocess.Popen(["storescp", *pdu, "-aet", DCMTK_AET, "-od", str(dcmtk_out),
                                     str(dcmtk_port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(0.5)

        def ours(method: str) -> Callable[[Path], int]:
            def action(out: Path) -> int:
                scp.writer.staging = out
                report = retrieve(pacs, local, out, study.study_uid, study.ct_series_uid,
                                  method=method, expected=expected, scp=scp)
                report.raise_if_incomplete()
                return report.received
            return action

        def movescu(out: Path) -> int:
            for old in dcmtk_out.iterdir():
                old.unlink()
            subprocess.run(["movescu", *peer, "-aet", "SAM2CT", "--move", DCMTK_AET, *keys],
                           check=True, capture_output=True)
            for f in dcmtk_out.iterdir():  # count them where timed() looks
                f.rename(out / f.name)
            return 0

        def getscu(out: Path) -> int:
            subprocess.run(["getscu", *peer, "-aet", "SAM2CT", "-od", str(out), *keys],
                           check=True, capture_output=True)
            return 0

        runners = {"ours C-MOVE": ours("move"), "DCMTK movescu+storescp": movescu,
                   "ours C-GET": ours("get"), "DCMTK getscu": getscu}
        best: dict[str, float] = {}
        for round_ in range(repeats):
            for name, action in runners.items():
                elapsed, count = timed(action, work / f"r{round_}-{name.replace(' ', '_')}")
                if count != slices:
                    raise SystemExit(f"{name}: {count} of {slices} instances arrived")
                best[name] = min(best.get(name, float("inf")), elapsed)
        scp.stop()
    finally:
        if storescp is not None:
            storescp.terminate()
            storescp.wait()
        orthanc.stop()
    print(f"series: {slices} instances, {megabytes:.1f} MB, Orthanc on loopback; best of {repeats}")
    for name, seconds in best.items():
        print(f"{name:24s} {seconds:6.2f} s  {megabytes / seconds:7.1f} MB/s  "
              f"{slices / seconds:7.1f} inst/s")
    move = best["DCMTK movescu+storescp"] / best["ours C-MOVE"]
    get = best["DCMTK getscu"] / best["ours C-GET"]
    print(f"throughput ratio ours/DCMTK: C-MOVE {move:.2f}, C-GET {get:.2f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
