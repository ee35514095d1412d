"""Benchmark: retrieve a 300-slice CT series from Orthanc on loopback, ours vs DCMTK, one run.

Ours: C-MOVE into our embedded storage SCP, and C-GET (pynetdicom). Peers: DCMTK ``movescu`` into
``storescp``, and DCMTK ``getscu``, each twice: as shipped, and with ``TCP_NODELAY=1`` in their
environment. Rounds alternate all of them so that load from other processes on a shared machine
hits all alike; the best round of each is kept. Prints MB/s, instances/s and the ratio of our
throughput to DCMTK's, both ways (goal >= 0.9). Every retrieved set is checked complete.

The series: 300 copies of real LUNG1 slices (512x512, uncompressed) with fresh UIDs.

Why two DCMTK figures: DCMTK (the tools, and Orthanc, which is built on it) leaves Nagle's
algorithm on unless the environment has ``TCP_NODELAY=1``. A DCMTK receiver writes its C-STORE
response in two pieces, so with Nagle on every instance waits for a delayed ACK (~40 ms on
loopback): "shipped" is what users get by default, "TCP_NODELAY" is DCMTK at its best. Orthanc
itself is started with ``TCP_NODELAY=1`` (the sender must not be the bottleneck of either side;
``--orthanc-nagle`` starts it as shipped, which caps every receiver near 80 instances/s).

Usage: .venv/bin/python bench/bench_pacs_retrieve.py [--slices 300] [--repeats 3] [--orthanc-nagle]
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
DCMTK_AETS = {"shipped": "STORESCP", "TCP_NODELAY": "STORESCPND"}


def dcmtk_env(variant: str) -> dict[str, str]:
    """The environment of a DCMTK tool: Nagle as shipped, or off with TCP_NODELAY=1."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return {**env, "TCP_NODELAY": "1"} if variant == "TCP_NODELAY" else env


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the block (Orthanc reads TCP_NODELAY when it starts)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    parser.add_argument("--orthanc-nagle", action="store_true",
                        help="start Orthanc as shipped (Nagle on) instead of TCP_NODELAY=1")
    args = parser.parse_args()
    for tool in ("Orthanc", "movescu", "storescp", "getscu"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_pacs_retrieve: {tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    try:
        return run(work, args.slices, args.repeats, args.dcmtk_pdu, args.orthanc_pdu,
                   args.orthanc_nagle)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, slices: int, repeats: int, dcmtk_pdu: int | None,
        orthanc_pdu: int | None, orthanc_nagle: bool = False) -> int:
    study = make_series(work / "data", slices)
    megabytes = sum(p.stat().st_size for p in study.ct_files) / 1e6
    ours_port = free_port()
    dcmtk_ports = {variant: free_port() for variant in DCMTK_AETS}
    modalities = {"sam2ct": ["SAM2CT", "127.0.0.1", ours_port],
                  **{f"dcmtk-{v}": [aet, "127.0.0.1", dcmtk_ports[v]]
                     for v, aet in DCMTK_AETS.items()}}
    with environment(**({} if orthanc_nagle else {"TCP_NODELAY": "1"})):
        orthanc = OrthancPeer(work / "orthanc", free_port(), free_port(), "SAM2CT", ours_port,
                              extra={"DicomModalities": modalities,
                                     **({"MaximumPduLength": orthanc_pdu} if orthanc_pdu else {})}
                              ).start()
    storescps: list[subprocess.Popen] = []
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
        received = {v: work / f"storescp-{v}" for v in DCMTK_AETS}
        for variant, aet in DCMTK_AETS.items():
            received[variant].mkdir()
            storescps.append(subprocess.Popen(
                ["storescp", *pdu, "-aet", aet, "-od", str(received[variant]),
                 str(dcmtk_ports[variant])], env=dcmtk_env(variant),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)

        def ours(method: str) -> Callable[[Path], int]:
            def action(out: Path) -> int:
                scp.writer.staging = out
                report = retrieve(pacs, local, out, study.study_uid, study.ct_series_uid,
                                  method=method, expected=expected, scp=scp)
                report.raise_if_incomplete()
                return report.received
            return action

        def movescu(variant: str) -> Callable[[Path], int]:
            def action(out: Path) -> int:
                for old in received[variant].iterdir():
                    old.unlink()
                subprocess.run(["movescu", *peer, "-aet", "SAM2CT", "--move", DCMTK_AETS[variant],
                                *keys], check=True, capture_output=True, env=dcmtk_env(variant))
                for f in received[variant].iterdir():  # count them where timed() looks
                    f.rename(out / f.name)
                return 0
            return action

        def getscu(variant: str) -> Callable[[Path], int]:
            def action(out: Path) -> int:
                subprocess.run(["getscu", *peer, "-aet", "SAM2CT", "-od", str(out), *keys],
                               check=True, capture_output=True, env=dcmtk_env(variant))
                return 0
            return action

        runners = {"ours C-MOVE": ours("move"),
                   "DCMTK movescu shipped": movescu("shipped"),
                   "DCMTK movescu NODELAY": movescu("TCP_NODELAY"),
                   "ours C-GET": ours("get"),
                   "DCMTK getscu shipped": getscu("shipped"),
                   "DCMTK getscu NODELAY": getscu("TCP_NODELAY")}
        best: dict[str, float] = {}
        for round_ in range(repeats):
            for name, action in runners.items():
                elapsed, count = timed(action, work / f"r{round_}-{name.replace(' ', '_')}")
                if count != slices:
                    raise SystemExit(f"{name}: {count} of {slices} instances arrived")
                best[name] = min(best.get(name, float("inf")), elapsed)
        scp.stop()
    finally:
        for proc in storescps:
            proc.terminate()
            proc.wait()
        orthanc.stop()
    report(best, slices, megabytes, repeats, orthanc_nagle)
    return 0


def report(best: dict[str, float], slices: int, megabytes: float, repeats: int,
           orthanc_nagle: bool) -> None:
    """Print each runner's best throughput and our ratios to both DCMTK variants."""
    sender = "as shipped (Nagle on)" if orthanc_nagle else "with TCP_NODELAY=1"
    print(f"series: {slices} instances, {megabytes:.1f} MB, Orthanc on loopback {sender}; "
          f"best of {repeats}")
    for name, seconds in best.items():
        print(f"{name:24s} {seconds:6.2f} s  {megabytes / seconds:7.1f} MB/s  "
              f"{slices / seconds:7.1f} inst/s")
    for ours, peer in (("ours C-MOVE", "DCMTK movescu"), ("ours C-GET", "DCMTK getscu")):
        shipped = best[f"{peer} shipped"] / best[ours]
        nodelay = best[f"{peer} NODELAY"] / best[ours]
        print(f"ratio {ours} / {peer}: {shipped:.2f} vs shipped, {nodelay:.2f} vs TCP_NODELAY=1 "
              "(goal >= 0.9)")


if __name__ == "__main__":
    sys.exit(main())
