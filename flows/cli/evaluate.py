"""`sam2ct evaluate`: simulate a prompt from a ground-truth mask, segment, and score the result.

    sam2ct evaluate --series DIR --truth FILE --roi NAME --prompt line|bidirectional|arrow
                    [--model M] [--seed S] [--json]

The truth is an RTSTRUCT (ROI by name), a DICOM SEG (segment by label) or a NIfTI label on the
series' grid. The prompt follows the RECIST rules of ``sam2ct.simulate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    from sam2ct.prompts import PromptKind

    p = sub.add_parser("evaluate", help="score a model on a series with a ground-truth mask")
    p.add_argument("--series", required=True, type=Path, help="folder (or file) of the CT series")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--truth", required=True, type=Path, help="RTSTRUCT, DICOM SEG or NIfTI mask")
    p.add_argument("--roi", default=None,
                   help="RTSTRUCT ROI name or SEG segment label (optional for a single structure)")
    p.add_argument("--prompt", default="line", choices=[k.value for k in PromptKind],
                   help="prompt kind simulated from the truth (default: line)")
    p.add_argument("--model", default=None, help="auto | classical | PATH.pt (default: settings)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated arrow's direction")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, simulate, segment, score; print the scores (exit 0) or one error line (exit 2)."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series
    from flows.cli import CommandError
    from flows.settings import Settings
    from sam2ct.registry import choose_segmenter
    from sam2ct.simulate import simulate_prompt

    settings = Settings()
    volume = load_series(args.series, args.series_uid)
    truth = read_truth(args.truth, volume, args.roi)
    if not truth.any():
        raise CommandError(f"{args.truth}: ROI '{args.roi}' has no voxel on series "
                           f"{volume.series_instance_uid}")
    prompt = simulate_prompt(truth, args.prompt, volume.spacing, np.random.default_rng(args.seed),
                             identifier=args.roi or "truth")
    choice = choose_segmenter(args.model or settings.model, device=args.device or settings.device)
    if choice.warning:
        print(f"WARNING: {choice.warning}", file=sys.stderr)
    start = time.perf_counter()
    [mask] = choice.segmenter.segment(volume.array, volume.spacing, [prompt])
    seconds = time.perf_counter() - start
    document = report(mask, truth, volume.spacing, prompt, choice.segmenter, seconds)
    document.update(series_instance_uid=volume.series_instance_uid, roi=args.roi,
                    warning=choice.warning)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _print_text(document)
    return 0


def report(mask: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], prompt,
           segmenter, seconds: float) -> dict[str, Any]:
    """The JSON document of one evaluation: scores, sizes, the prompt and the model."""
    from sam2ct.geometry import long_axis_mm
    from sam2ct.metrics import evaluate, volume_ml

    scores = evaluate(mask, truth, spacing).to_json()
    return {
        **{k: (round(v, 4) if v is not None else None) for k, v in scores.items()},
        "seconds": round(seconds, 3),
        "model": segmenter.name,
        "model_version": segmenter.version,
        "checkpoint_sha256": segmenter.checkpoint_sha256,
        "prompt": {"kind": prompt.kind.value, "slice_index": prompt.slice_index,
                   "points": np.round(prompt.points, 2).tolist()},
        "truth_volume_ml": round(volume_ml(truth, spacing), 3),
        "predicted_volume_ml": round(volume_ml(mask, spacing), 3),
        "truth_long_axis_mm": round(long_axis_mm(truth, spacing), 2),
    }


def _print_text(doc: dict[str, Any]) -> None:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    print(f"model {doc['model']} {doc['model_version']}, prompt {doc['prompt']['kind']} "
          f"on slice {doc['prompt']['slice_index']}")
    for key in ("dice", "hd95_mm", "volume_error_pct", "long_axis_error_mm", "truth_volume_ml",
                "predicted_volume_ml", "seconds"):
        print(f"  {key:20s} {fmt(doc[key])}")
