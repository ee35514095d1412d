"""Benchmark: the classical segmenter against a naive threshold-and-copy peer, same prompts, same run.

Prints per case Dice, predicted / true volume and seconds of both, then mean Dice (with spread and
per organ for synthetic lesions), the largest volume ratio (a leak shows there) and the ratios
classical / naive. Prompts are simulated from the truth (RECIST line by default; an arrow's
direction from each of ``--arrow-seeds`` seeds). The naive peer centres on the prompt's points, so
it is a fair peer for line and bidirectional prompts only (for an arrow it sits between head and
tail). Run:

    .venv/bin/python bench/bench_classical.py [--prompt line|arrow] [--arrow-seeds 8]
        [--synth-studies 7] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

from dicom_io.truth import read_truth
from dicom_io.volume import load_series
from sam2ct.classical import ClassicalSegmenter
from sam2ct.metrics import dice
from sam2ct.prompts import Prompt
from sam2ct.simulate import simulate_prompt

LUNG1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung1"


def naive(volume: np.ndarray, spacing: tuple[float, float, float], prompt: Prompt) -> np.ndarray:
    """The peer: threshold around the HU under the prompt inside a disc of the prompt's size on
    the prompt slice, and copy that region to the neighbouring slices (re-thresholded there)."""
    pts = prompt.points[:, ::-1]
    centre = pts.mean(axis=0)
    radius_mm = max(float(np.max(np.linalg.norm((pts - centre) * spacing[1:], axis=1))), 3.0)
    rows, cols = np.mgrid[: volume.shape[1], : volume.shape[2]]
    disc = np.hypot((rows - centre[0]) * spacing[1], (cols - centre[1]) * spacing[2]) <= radius_mm
    z0 = prompt.slice_index
    mu = float(np.median(volume[z0][np.hypot((rows - centre[0]) * spacing[1],
                                             (cols - centre[1]) * spacing[2]) <= radius_mm / 2]))
    band = np.abs(volume - mu) <= 100.0
    labels, _ = ndimage.label(band[z0] & disc)
    region = labels == labels[int(round(centre[0])), int(round(centre[1]))] \
        if labels[int(round(centre[0])), int(round(centre[1]))] else band[z0] & disc
    mask = np.zeros(volume.shape, dtype=bool)
    reach = int(radius_mm / spacing[0])
    for z in range(max(z0 - reach, 0), min(z0 + reach + 1, volume.shape[0])):
        mask[z] = region & band[z]
    return mask


def run_case(name: str, organ: str, volume, truth: np.ndarray, kind: str, seed: int = 0) -> dict:
    prompt = simulate_prompt(truth, kind, volume.spacing, np.random.default_rng(seed))
    row = {"case": name, "organ": organ}
    for label, fn in (("classical", lambda: ClassicalSegmenter().segment(
            volume.array, volume.spacing, [prompt])[0]),
            ("naive", lambda: naive(volume.array, volume.spacing, prompt))):
        start = time.perf_counter()
        mask = fn()
        row[f"{label}_s"] = time.perf_counter() - start
        row[f"{label}_dice"] = dice(mask, truth)
        row[f"{label}_volume"] = float(mask.sum()) / float(truth.sum())
    print(f"{name:28s} {organ:7s} classical {row['classical_dice']:.3f} "
          f"x{row['classical_volume']:.2f} ({row['classical_s']:.2f} s)  "
          f"naive {row['naive_dice']:.3f} x{row['naive_volume']:.2f} ({row['naive_s']:.2f} s)",
          flush=True)
    return row


def summary(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    c = np.array([r["classical_dice"] for r in rows])
    n = np.array([r["naive_dice"] for r in rows])
    tc = np.array([r["classical_s"] for r in rows])
    tn = np.array([r["naive_s"] for r in rows])
    vc = np.array([r["classical_volume"] for r in rows])
    vn = np.array([r["naive_volume"] for r in rows])
    print(f"{title}: n={len(rows)} classical Dice mean {c.mean():.3f} sd {c.std():.3f} "
          f"min {c.min():.3f} | naive mean {n.mean():.3f} | Dice ratio {c.mean() / n.mean():.2f} "
          f"| time classical {tc.mean():.2f} s, ratio classical/naive {tc.sum() / tn.sum():.1f}")
    print(f"  volume / truth: classical median {np.median(vc):.2f} max {vc.max():.2f}, "
          f"mean |error| {100 * np.mean(np.abs(vc - 1)):.0f} % | naive median {np.median(vn):.2f} "
          f"max {vn.max():.2f}")
    by_organ = defaultdict(list)
    for r in rows:
        by_organ[r["organ"]].append(r["classical_dice"])
    if len(by_organ) > 1:
        print("  per organ: " + ", ".join(f"{k} {np.mean(v):.3f} (n={len(v)})"
                                          for k, v in sorted(by_organ.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="line")
    parser.add_argument("--synth-studies", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--arrow-seeds", type=int, default=1,
                        help="arrow directions per lesion (seeds 0..N-1); other prompts use one")
    args = parser.parse_args()
    seeds = range(args.arrow_seeds if args.prompt == "arrow" else 1)

    real = []
    for case in ("LUNG1-001", "LUNG1-002"):
        if (LUNG1 / case).exists():
            volume = load_series(LUNG1 / case / "ct")
            truth = read_truth(LUNG1 / case / "rtstruct.dcm", volume, "GTV-1")
            real += [run_case(f"{case}#{k}", "lung", volume, truth, args.prompt, k)
                     for k in seeds]
    synthetic = []
    if args.synth_studies:
        from dicom_io.synth import make_studies

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_studies(root, studies=args.synth_studies, seed=args.seed, size=args.size)
            for study in json.loads((root / "manifest.json").read_text())["studies"]:
                volume = load_series(root / study["ct_dir"])
                for lesion in study["lesions"]:
                    truth = read_truth(root / lesion["truth"], volume)
                    synthetic += [run_case(f"{study['name']}/{lesion['id']}#{k}",
                                           lesion["organ"], volume, truth, args.prompt, k)
                                  for k in seeds]
    summary("LUNG1 GTV-1", real)
    summary(f"synthetic (seed {args.seed}, {args.size} px)", synthetic)


if __name__ == "__main__":
    main()
