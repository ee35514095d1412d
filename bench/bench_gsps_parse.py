"""Benchmark: GSPS parsing rate of ``read_gsps`` vs a bare ``pydicom.dcmread`` of the same files.

Reads every real presentation state under ../shared/data/gsps (Agfa, ClearCanvas, MedDream)
``--rounds`` times per trial, best of ``--trials``; prints files/s, annotations/s and the overhead
factor ours / dcmread measured in the same run.

Usage: .venv/bin/python bench/bench_gsps_parse.py [GSPS_DIR] [--rounds N] [--trials T]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from dicom_io.gsps import read_gsps

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsps"


def presentation_states(folder: Path) -> list[Path]:
    """The PR files under ``folder`` (by SOP class, not by name)."""
    out = []
    for path in sorted(p for p in folder.rglob("*.dcm") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.11."):
            out.append(path)
    return out


def timed(work: Callable[[], int]) -> tuple[float, int]:
    """Wall time of one run of ``work`` and what it returned."""
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def _touch_all(ds: pydicom.Dataset) -> int:
    """Decode every element value (pydicom converts values lazily, on first access)."""
    count = 0
    for element in ds.iterall():
        _ = element.value
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=50, help="passes over the files per trial")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    files = presentation_states(args.folder)
    if not files:
        raise SystemExit(f"no presentation state files under {args.folder}")
    work = files * args.rounds

    def bare() -> int:
        for path in work:
            pydicom.dcmread(path)
        return 0

    def decoded() -> int:
        return sum(_touch_all(pydicom.dcmread(path)) for path in work)

    def ours() -> int:
        return sum(len(read_gsps(path)) for path in work)

    # Trials interleave the three so that a busy machine slows them alike; best of each.
    best = {"bare": float("inf"), "decoded": float("inf"), "ours": float("inf")}
    annotations = 0
    for _ in range(args.trials):
        for name, fn in (("bare", bare), ("decoded", decoded), ("ours", ours)):
            seconds, result = timed(fn)
            best[name] = min(best[name], seconds)
            annotations = result if name == "ours" else annotations
    n = len(work)
    print(f"files: {len(files)} presentation states x {args.rounds} rounds = {n} parses, "
          f"{annotations} annotations; best of {args.trials} interleaved trials")
    print(f"pydicom.dcmread          : {best['bare']:8.3f} s  {n / best['bare']:9.1f} files/s")
    print(f"dcmread + decode all     : {best['decoded']:8.3f} s  "
          f"{n / best['decoded']:9.1f} files/s")
    print(f"read_gsps                : {best['ours']:8.3f} s  {n / best['ours']:9.1f} files/s  "
          f"{annotations / best['ours']:9.1f} annotations/s")
    print(f"overhead factor read_gsps / dcmread: {best['ours'] / best['bare']:.2f}x")
    print(f"read_gsps / (dcmread + decode all): {best['ours'] / best['decoded']:.2f}x")


if __name__ == "__main__":
    main()
