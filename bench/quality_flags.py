"""Calibrate and check the automatic quality flags (``sam2ct.quality``) against Dice with truth.

Segments lesions with the classical model from simulated prompts (line, bidirectional, arrow;
``sam2ct.simulate``), scores each mask against its truth (Dice) and measures its quality evidence
(``sam2ct.quality.quality_evidence``, as ``flows.segment_series`` does). Then:

1. **calibrate**: on the synthetic studies of ``--calibration-seeds``, choose each threshold of
   ``QualityThresholds`` from a small grid by coordinate ascent: the most Dice < 0.5 masks
   flagged while at most ``--max-false-flags`` of the Dice >= 0.7 ones are (all prompt kinds
   together; ties keep the more permissive value);
2. **report**: with the chosen thresholds (and with the defaults in ``sam2ct.quality``) print the
   confusion table flagged / not flagged x Dice < 0.5, 0.5-0.7, >= 0.7 per prompt kind on the
   held-out synthetic seeds ``--test-seeds`` and on LUNG1 (GTV-1 of LUNG1-001 and -002, prompts on
   several slices of the tumour, arrows from several directions), and which flags fired.

The cases are cached (``--cache``, JSON lines), so a re-run only re-calibrates. Run:

    .venv/bin/python bench/quality_flags.py [--calibration-seeds 101,...,124]
        [--test-seeds 201,...,224] [--size 256] [--arrows 3] [--max-false-flags 0.2]
        [--no-lung1] [--cache FILE]

(about 5 minutes on two cores; the LUNG1 table of the README and the issue note used
``--calibration-seeds '' --test-seeds '' --arrows 6``, 24 masks, under a minute once loaded).
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from sam2ct.classical import ClassicalSegmenter
from sam2ct.geometry import measure_mask
from sam2ct.metrics import dice
from sam2ct.prompts import PromptKind
from sam2ct.quality import DEFAULT_THRESHOLDS, QualityEvidence, QualityThresholds, quality_evidence
from sam2ct.simulate import largest_slice, simulate_prompt

LUNG1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung1"
KINDS = (PromptKind.LINE, PromptKind.BIDIRECTIONAL, PromptKind.ARROW)
#: candidate values per threshold (the first one never fires). The grid stops where synthetic
#: lesions stop resembling real ones: real tumours are lobulated (solidity down to ~0.75 where
#: synthetic blobs stay above 0.9), elongated (a sphere of the long axis overstates them 2-4x)
#: or flat against a wall, and a reader's arrow tip may stop a few mm short of the lesion; a
#: tighter value learnt from synthetic blobs would flag good masks of real lesions.
GRID: dict[str, list] = {
    "volume_ratio": [(0.0, 1e9)] + [(lo, hi) for lo in (0.15, 0.2, 0.25, 0.3)
                                    for hi in (2.0, 2.5, 3.0, 4.0)],
    "diameter_ratio": [(0.0, 1e9)] + [(lo, hi) for lo in (0.5, 0.6, 0.7)
                                      for hi in (1.3, 1.5, 1.8, 2.2)],
    "min_line_coverage": [0.0, 0.4, 0.5, 0.6, 0.7, 0.8],
    "max_tip_distance_mm": [1e9, 5.0, 8.0, 12.0],
    "min_arrow_alignment": [-1.0, -0.5, 0.0, 0.3, 0.5],
    "max_behind_share": [1.0, 0.1, 0.2, 0.3, 0.5],
    "min_solidity": [0.0, 0.5, 0.6, 0.7],
    "max_rim_similarity": [1.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7],
    "z_ratio": [(0.0, 1e9)] + [(lo, hi) for lo in (0.2, 0.3, 0.4, 0.5)
                               for hi in (1.5, 2.0, 2.5, 3.0, 4.0)],
}


# --- cases ----------------------------------------------------------------------------------

def synthetic_lesions(seed: int, size: int) -> Iterator[tuple[str, np.ndarray, tuple, np.ndarray]]:
    """(name, HU volume, spacing, truth) of each lesion of one synthetic study (in memory)."""
    from dicom_io.synth.phantom import Grid, make_phantom

    rng = np.random.default_rng([seed, 0])
    pixel = round(float(rng.uniform(360.0, 460.0)) / size, 4)
    spacing = float((2.0, 2.5, 3.0, 5.0)[int(rng.integers(4))])
    slices = max(16, int(round(rng.uniform(180.0, 240.0) / spacing)))
    grid = Grid(size, size, slices, pixel, spacing, (0.0, 0.0, 0.0))
    phantom = make_phantom(grid, rng, lesion_count=int(rng.integers(2, 5)))
    for lesion in phantom.lesions:
        yield (f"synth-{seed}/{lesion.id}-{lesion.organ.value}", phantom.hu,
               (spacing, pixel, pixel), lesion.full_mask(grid.shape).astype(bool))


def lung1_lesions() -> Iterator[tuple[str, np.ndarray, tuple, np.ndarray]]:
    """(name, HU volume, spacing, GTV-1) of LUNG1-001 and -002, when the data is there."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series

    for case in ("LUNG1-001", "LUNG1-002"):
        if (LUNG1 / case).exists():
            volume = load_series(LUNG1 / case / "ct")
            truth = read_truth(LUNG1 / case / "rtstruct.dcm", volume, "GTV-1")
            yield case, volume.array, volume.spacing, truth


def prompts_of(truth: np.ndarray, spacing: tuple, arrows: int, slices: int, name: str):
    """(kind, label, prompt): lines and bidirectionals on ``slices`` slices of the lesion (the
    largest, then the first and last with at least half its area, where a reader may measure
    too), arrows from ``arrows`` directions on the largest slice."""
    areas = truth.sum(axis=(1, 2))
    z_max = largest_slice(truth)
    wide = np.flatnonzero(areas >= 0.5 * areas[z_max])
    chosen = [z_max, int(wide[0]), int(wide[-1])][:slices]
    for kind in KINDS:
        if kind is PromptKind.ARROW:
            for k in range(arrows):
                rng = np.random.default_rng([k, zlib.crc32(name.encode())])
                yield kind, f"arrow{k}", simulate_prompt(truth, kind, spacing, rng, name)
            continue
        for z in dict.fromkeys(chosen):
            on_slice = np.zeros_like(truth)
            on_slice[z] = truth[z]
            yield kind, f"z{z}", simulate_prompt(on_slice, kind, spacing, identifier=name)


def run_cases(source: str, lesions, arrows: int, slices: int) -> Iterator[dict]:
    """Segment every prompt of every lesion; one dict per mask (Dice and quality evidence)."""
    segmenter = ClassicalSegmenter()
    for name, hu, spacing, truth in lesions:
        for kind, label, prompt in prompts_of(truth, spacing, arrows, slices, name):
            start = time.perf_counter()
            [mask] = segmenter.segment(hu, spacing, [prompt])
            seconds = time.perf_counter() - start
            measures = measure_mask(mask, spacing, hu) if mask.any() else None
            evidence = quality_evidence(mask, spacing, prompt, measures, hu)
            row = {"source": source, "case": f"{name}#{label}", "kind": kind.value,
                   "dice": round(dice(mask, truth), 4), "seconds": round(seconds, 2),
                   "evidence": asdict(evidence)}
            print(f"  {row['case']:42s} {kind.value:13s} Dice {row['dice']:.3f} "
                  f"flags {[f.code.value for f in evidence.flags()]} ({seconds:.1f} s)",
                  flush=True)
            yield row


def evidence_of(row: dict) -> QualityEvidence:
    """The row's evidence as the dataclass (made once per row)."""
    if "_evidence" not in row:
        e = dict(row["evidence"])
        e["kind"] = PromptKind(e["kind"])
        e["borders"] = tuple(e["borders"])
        row["_evidence"] = QualityEvidence(**e)
    return row["_evidence"]


def load_or_run(cache: Path, wanted: list[tuple[str, object]], args) -> list[dict]:
    """Cached rows of each (source, lesion iterator factory); the missing sources are run."""
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    have = {r["source"] for r in rows}
    for source, make in wanted:
        if source in have:
            continue
        print(f"segmenting {source} ...", flush=True)
        new = list(run_cases(source, make(), args.arrows, args.slices))
        rows += new
        with cache.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in new)
    return rows


# --- calibration and the tables -------------------------------------------------------------

def flagged(rows: list[dict], t: QualityThresholds) -> np.ndarray:
    return np.array([bool(evidence_of(r).flags(t)) for r in rows])


def rates(rows: list[dict], t: QualityThresholds) -> tuple[float, float]:
    """(share of Dice < 0.5 flagged, share of Dice >= 0.7 flagged) under ``t``."""
    dices = np.array([r["dice"] for r in rows])
    flags = flagged(rows, t)
    bad, good = dices < 0.5, dices >= 0.7
    return (float(flags[bad].mean()) if bad.any() else 0.0,
            float(flags[good].mean()) if good.any() else 0.0)


def calibrate(rows: list[dict], max_false: float, passes: int = 2) -> QualityThresholds:
    """Coordinate ascent over ``GRID``: the most bad masks flagged with at most ``max_false`` of
    the good ones flagged; ties keep the more permissive value (earlier in the grid)."""
    t = QualityThresholds(**{name: values[0] for name, values in GRID.items()})
    for _ in range(passes):
        for name, values in GRID.items():
            scored = []
            for i, v in enumerate(values):
                tpr, fpr = rates(rows, replace(t, **{name: v}))
                if fpr <= max_false or i == 0:
                    scored.append((round(tpr, 6), -round(fpr, 6), -i, v))
            t = replace(t, **{name: max(scored)[3]})
    return t


def table(title: str, rows: list[dict], t: QualityThresholds) -> None:
    """Print flagged / not x Dice band per kind, and the flags that fired."""
    print(f"\n{title} (n={len(rows)})")
    print(f"{'kind':14s} {'':9s} {'Dice<0.5':>9s} {'0.5-0.7':>8s} {'>=0.7':>6s}   "
          f"{'sens':>5s} {'spec':>5s}")
    for kind in [*(k.value for k in KINDS), "all"]:
        sub = [r for r in rows if kind in ("all", r["kind"])]
        if not sub:
            continue
        dices = np.array([r["dice"] for r in sub])
        flags = flagged(sub, t)
        bands = (dices < 0.5, (dices >= 0.5) & (dices < 0.7), dices >= 0.7)
        for label, sel in (("flagged", flags), ("not", ~flags)):
            counts = [int((sel & b).sum()) for b in bands]
            extra = ""
            if label == "flagged":
                sens = counts[0] / max(int(bands[0].sum()), 1)
                spec = 1 - counts[2] / max(int(bands[2].sum()), 1)
                extra = f"   {sens:5.2f} {spec:5.2f}"
            print(f"{kind if label == 'flagged' else '':14s} {label:9s} {counts[0]:9d} "
                  f"{counts[1]:8d} {counts[2]:6d}{extra}")
    fired = Counter(f.code.value for r in rows for f in evidence_of(r).flags(t))
    print("flags fired: " + (", ".join(f"{k} {v}" for k, v in fired.most_common()) or "none"))
    bad = [r for r in rows if r["dice"] < 0.5 and not evidence_of(r).flags(t)]
    if bad:
        print("missed (Dice < 0.5, no flag): " + ", ".join(f"{r['case']} {r['dice']:.2f}"
                                                           for r in bad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-seeds", default=",".join(map(str, range(101, 125))))
    parser.add_argument("--test-seeds", default=",".join(map(str, range(201, 225))))
    parser.add_argument("--size", type=int, default=256, help="synthetic slice size (pixels)")
    parser.add_argument("--arrows", type=int, default=3, help="arrow directions per lesion")
    parser.add_argument("--slices", type=int, default=3, help="slices per line / bidirectional")
    parser.add_argument("--max-false-flags", type=float, default=0.2,
                        help="calibration: largest share of Dice >= 0.7 masks flagged")
    parser.add_argument("--no-lung1", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sam2ct-quality-cases.jsonl"))
    args = parser.parse_args()
    cal = [int(s) for s in args.calibration_seeds.split(",") if s]
    test = [int(s) for s in args.test_seeds.split(",") if s]

    def synth(seed: int):
        return lambda: synthetic_lesions(seed, args.size)

    wanted = [(f"synth-{s}-{args.size}", synth(s)) for s in cal + test]
    if not args.no_lung1:
        wanted.append(("lung1", lung1_lesions))
    rows = load_or_run(args.cache, wanted, args)
    by = {s: [r for r in rows if r["source"] == f"synth-{s}-{args.size}"] for s in cal + test}
    cal_rows = [r for s in cal for r in by[s]]
    test_rows = [r for s in test for r in by[s]]
    lung = [r for r in rows if r["source"] == "lung1"]

    chosen = calibrate(cal_rows, args.max_false_flags)
    print("\ncalibrated thresholds: " + ", ".join(f"{f.name}={getattr(chosen, f.name)}"
                                                  for f in fields(chosen)))
    print("defaults in sam2ct.quality: " + ", ".join(
        f"{f.name}={getattr(DEFAULT_THRESHOLDS, f.name)}" for f in fields(DEFAULT_THRESHOLDS)))
    for name, t in (("calibrated", chosen), ("defaults", DEFAULT_THRESHOLDS)):
        table(f"[{name}] calibration seeds {cal}", cal_rows, t)
        table(f"[{name}] held-out synthetic seeds {test}", test_rows, t)
        if lung:
            table(f"[{name}] LUNG1 GTV-1", lung, t)


if __name__ == "__main__":
    main()
