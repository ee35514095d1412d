"""Benchmark: load a CT series with our loader vs SimpleITK's ImageSeriesReader (GDCM sorting).

Prints the best-of-N seconds of each and the ratio ours / SimpleITK, measured in the same run.

Usage: .venv/bin/python bench/bench_volume_load.py [SERIES_DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_io.volume import load_series

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lung1" / "LUNG1-001" / "ct"


def load_sitk(folder: Path) -> np.ndarray:
    """The peer: GDCM series file names, then ImageSeriesReader, then a float32 HU array."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)


def load_ours(folder: Path) -> np.ndarray:
    """Our loader: index pass with deferred pixels, ordering, HU array."""
    return load_series(folder).array


def best_of_interleaved(
    loaders: dict[str, Callable[[Path], np.ndarray]], folder: Path, repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """Fastest wall time of each loader over ``repeats`` rounds, alternating loaders each round
    so that load from other processes on a shared machine hits both alike; and the last result."""
    best: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(repeats):
        for name, fn in loaders.items():
            start = time.perf_counter()
            result = fn(folder)
            seconds = time.perf_counter() - start
            best[name] = (min(seconds, best.get(name, (np.inf, result))[0]), result)
    return best


def main() -> None:
    """Run both loaders on one series and print seconds and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_sitk(args.series)  # warm the page cache for both
    best = best_of_interleaved({"sitk": load_sitk, "ours": load_ours}, args.series, args.repeats)
    (t_sitk, ref), (t_ours, ours) = best["sitk"], best["ours"]
    same = ref.shape == ours.shape and bool(np.array_equal(ref, ours))
    print(f"series: {args.series} shape {ours.shape}, identical voxels: {same}")
    print(f"SimpleITK ImageSeriesReader: {t_sitk:.3f} s (best of {args.repeats})")
    print(f"dicom_io.load_series:        {t_ours:.3f} s (best of {args.repeats})")
    print(f"ratio ours/SimpleITK: {t_ours / t_sitk:.2f}")


if __name__ == "__main__":
    main()
