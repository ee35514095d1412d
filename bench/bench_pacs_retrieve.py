"""Benchmark: retrieve a 300-slice CT series from Orthanc on loopback, ours vs DCMTK, one run.

Ours: C-MOVE into our embedded storage SCP, and C-GET (pynetdicom), each on one association
("x1") and split over ``--associations`` N at once ("xN": each part's association in a worker
process; C-MOVE instances still arrive at the one SCP; see dicom_io/pacs/parallel.py). Peers: DCMTK ``movescu`` into
``storescp``, and DCMTK ``getscu``, each twice: as shipped, and with ``TCP_NODELAY=1`` in their
environment. Rounds alternate all of them so that load from other processes on a shared machine
hits all alike; the best round of each is kept. Prints MB/s, instances/s, the CPU the receiving
side and Orthanc spent per instance in that round (a figure that load from other processes hardly
moves; "-" where the receiver's workers are not ours to measure), and the ratio of our
throughput to DCMTK's, both ways (goal >= 0.9). Every retrieved set is checked complete. The
first "xN" C-GET round also starts the forkserver (~0.7 s, once per process); the best of
``--repeats`` >= 2 leaves it out, as a long-running harvest would.

The series: 300 copies of real LUNG1 slices (512x512, uncompressed) with fresh UIDs.

Why two DCMTK figures: DCMTK (the tools, and Orthanc, which is built on it) leaves Nagle's
algorithm on unless the environment has ``TCP_NODELAY=1``. A DCMTK receiver writes its C-STORE
response in two pieces, so with Nagle on every instance waits for a delayed ACK (~40 ms on
loopback): "shipped" is what users get by default, "TCP_NODELAY" is DCMTK at its best. Orthanc
itself is started with ``TCP_NODELAY=1`` (the sender must not be the bottleneck of either side;
``--orthanc-nagle`` starts it as shipped, which caps every receiver near 80 instances/s).

Usage: .venv/bin/python bench/bench_pacs_retrieve.py [--slices 300] [--repeats 3] [--associations 2]
       [--orthanc-nagle]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
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


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of our finished (waited-for) child processes: DCMTK's getscu and movescu."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Probe = Callable[[], float] | None  # CPU seconds so far of a runner's receiving side


def timed(action: Callable[[Path], int], out: Path, probe: Probe,
          sender: int) -> tuple[float, int, float | None, float]:
    """Run one retrieval into ``out``: seconds, files there, receiver and sender CPU seconds."""
    out.mkdir(parents=True)
    cpu, sent = probe() if probe else 0.0, cpu_of(sender)
    start = time.perf_counter()
    action(out)
    elapsed = time.perf_counter() - start
    cpu = probe() - cpu if probe else None
    count = len(list(out.rglob("*.dcm"))) + len(list(out.glob("CT*")))
    return elapsed, count, cpu, cpu_of(sender) - sent


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
    parser.add_argument("--associations", type=int, default=2,
                        help="associations at once for our split retrievals (default 2)")
    args = parser.parse_args()
    for tool in ("Orthanc", "movescu", "storescp", "getscu"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_pacs_retrieve: {tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    try:
        return run(work, args.slices, args.repeats, args.dcmtk_pdu, args.orthanc_pdu,
                   args.orthanc_nagle, args.associations)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, slices: int, repeats: int, dcmtk_pdu: int | None,
        orthanc_pdu: int | None, orthanc_nagle: bool = False, associations: int = 2) -> int:
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
        pacs = PacsSettings.parse(orthanc.address, max_rate=100.0,
                                  max_associations=associations)
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

        def ours(method: str, parts: int) -> Callable[[Path], int]:
            def action(out: Path) -> int:
                scp.writer.staging = out
                report = retrieve(pacs, local, out, study.study_uid, study.ct_series_uid,
                                  method=method, expected=expected, scp=scp,
                                  associations=parts)
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

        def storescp_cpu(variant: str) -> Callable[[], float]:
            proc = storescps[list(DCMTK_AETS).index(variant)]
            return lambda: children_cpu() + cpu_of(proc.pid)

        n = associations
        ours_cpu = time.process_time  # our process: the SCP's threads, or the C-GET's
        runners: dict[str, tuple[Callable[[Path], int], Probe]] = {
            "ours C-MOVE x1": (ours("move", 1), ours_cpu),
            f"ours C-MOVE x{n}": (ours("move", n), None),  # requests in worker processes
            "DCMTK movescu shipped": (movescu("shipped"), storescp_cpu("shipped")),
            "DCMTK movescu NODELAY": (movescu("TCP_NODELAY"), storescp_cpu("TCP_NODELAY")),
            "ours C-GET x1": (ours("get", 1), ours_cpu),
            f"ours C-GET x{n}": (ours("get", n), None),  # all in worker processes
            "DCMTK getscu shipped": (getscu("shipped"), children_cpu),
            "DCMTK getscu NODELAY": (getscu("TCP_NODELAY"), children_cpu)}
        best: dict[str, tuple[float, float | None, float]] = {}
        for round_ in range(repeats):
            for name, (action, probe) in runners.items():
                elapsed, count, cpu, sent = timed(
                    action, work / f"r{round_}-{name.replace(' ', '_')}", probe, orthanc.proc.pid)
                if count != slices:
                    raise SystemExit(f"{name}: {count} of {slices} instances arrived")
                if elapsed < best.get(name, (float("inf"),))[0]:
                    best[name] = (elapsed, cpu, sent)
        scp.stop()
    finally:
        for proc in storescps:
            proc.terminate()
            proc.wait()
        orthanc.stop()
    report(best, slices, megabytes, repeats, orthanc_nagle, associations)
    return 0


def report(runs: dict[str, tuple[float, float | None, float]], slices: int, megabytes: float,
           repeats: int, orthanc_nagle: bool, associations: int) -> None:
    """Print each runner's best throughput and our ratios to both DCMTK variants."""
    sender = "as shipped (Nagle on)" if orthanc_nagle else "with TCP_NODELAY=1"
    print(f"series: {slices} instances, {megabytes:.1f} MB, Orthanc on loopback {sender}; "
          f"best of {repeats}; CPU in ms per instance")
    for name, (seconds, cpu, sent) in runs.items():
        mine = f"{cpu / slices * 1000:5.1f}" if cpu is not None else "    -"
        print(f"{name:24s} {seconds:6.2f} s  {megabytes / seconds:7.1f} MB/s  "
              f"{slices / seconds:7.1f} inst/s  CPU receiver {mine}, Orthanc "
              f"{sent / slices * 1000:4.1f}")
    best = {name: seconds for name, (seconds, _, _) in runs.items()}
    pairs = [(f"ours {op} x{n}", peer) for op, peer in (("C-MOVE", "DCMTK movescu"),
                                                        ("C-GET", "DCMTK getscu"))
             for n in dict.fromkeys((1, associations))]
    for ours, peer in pairs:
        shipped = best[f"{peer} shipped"] / best[ours]
        nodelay = best[f"{peer} NODELAY"] / best[ours]
        print(f"ratio {ours:14s} / {peer}: {shipped:.2f} vs shipped, {nodelay:.2f} vs TCP_NODELAY=1 "
              "(goal >= 0.9)")


if __name__ == "__main__":
    sys.exit(main())
