"""`sam2ct evaluate`: simulate a prompt from a ground-truth mask, segment, and score the result.

    sam2ct evaluate --series DIR --truth FILE --roi NAME --prompt line|bidirectional|arrow
                    [--model M] [--seed S] [--json]
    sam2ct evaluate --dataset DIR --out DIR [--prompt line,bidirectional,arrow] [--model M]
                    [--seed S] [--lesions components|whole] [--json]

The truth is an RTSTRUCT (ROI by name), a DICOM SEG (segment by label) or a NIfTI label on the
series' grid. The prompt follows the RECIST rules of ``sam2ct.simulate``.

The dataset form scores every lesion (connected component of the label, by default) of every
NIfTI image/label pair under DIR with every prompt kind, and writes OUT/cases.csv and
OUT/summary.md (see ``sam2ct.evaluation``); ``--json`` prints the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicom_io.printable import printable
from flows.cli.bounds import SEED_MAX, bounded_int

if TYPE_CHECKING:
    from sam2ct.prompts import PromptKind

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    from sam2ct.prompts import PromptKind

    p = sub.add_parser("evaluate", help="score a model on a series with a ground-truth mask, "
                                        "or on a dataset of NIfTI image/label pairs")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--series", type=Path, help="folder (or file) of the CT series")
    source.add_argument("--dataset", type=Path,
                        help="folder of NIfTI image/label pairs (imagesTr+labelsTr, "
                             "images+labels, or X_image+X_label)")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--truth", type=Path, help="RTSTRUCT, DICOM SEG or NIfTI mask (with --series)")
    p.add_argument("--roi", default=None,
                   help="RTSTRUCT ROI name or SEG segment label (optional for a single structure)")
    p.add_argument("--prompt", default=None,
                   help=f"prompt kind simulated from the truth ({'|'.join(PromptKind)}); "
                        "default line; with --dataset a comma list, default line,bidirectional,arrow")
    p.add_argument("--out", type=Path, help="output folder for cases.csv and summary.md (--dataset)")
    p.add_argument("--lesions", default="components",
                   help="--dataset: 'components' (one lesion per connected component of the label, "
                        "default) or 'whole' (the whole label as one lesion)")
    p.add_argument("--min-voxels", type=bounded_int(1, 10**9), default=10,
                   help="--dataset: skip lesions smaller than this (default 10)")
    p.add_argument("--model", default=None, help="auto | classical | PATH.pt (default: settings)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX),
                   default=0, help="seed of the simulated arrow's direction")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run)


def parse_kinds(text: str | None, default: Sequence[str]) -> list[PromptKind]:
    """``line,arrow`` -> prompt kinds, in order, without repeats; ValueError names a bad one."""
    from sam2ct.prompts import PromptKind

    names = [n.strip() for n in (text or ",".join(default)).split(",") if n.strip()]
    kinds: list[PromptKind] = []
    for name in names:
        try:
            kind = PromptKind(name.lower())
        except ValueError as exc:
            raise ValueError(f"Invalid '--prompt' value '{name}' - choose from "
                             f"{', '.join(PromptKind)}") from exc
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        raise ValueError(f"Invalid '--prompt' value '{text}' - no prompt kind given")
    return kinds


def run(args: argparse.Namespace) -> int:
    """Dispatch to the single-series or the dataset form."""
    if args.dataset is not None:
        return run_dataset(args)
    return run_series(args)


def run_series(args: argparse.Namespace) -> int:
    """Load, simulate, segment, score; print the scores (exit 0) or one error line (exit 2)."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series
    from flows.cli import CommandError
    from flows.settings import Settings
    from sam2ct.registry import choose_segmenter
    from sam2ct.simulate import simulate_prompt

    if args.truth is None:
        raise CommandError("--series needs --truth (an RTSTRUCT, DICOM SEG or NIfTI mask)")
    kinds = parse_kinds(args.prompt, ["line"])
    if len(kinds) != 1:
        raise CommandError(f"--series takes one --prompt kind, got '{args.prompt}'")
    settings = Settings()
    volume = load_series(args.series, args.series_uid)
    truth = read_truth(args.truth, volume, args.roi)
    if not truth.any():
        raise CommandError(f"{args.truth}: ROI '{args.roi}' has no voxel on series "
                           f"{volume.series_instance_uid}")
    prompt = simulate_prompt(truth, kinds[0], volume.spacing, np.random.default_rng(args.seed),
                             identifier=args.roi or "truth")
    choice = choose_segmenter(args.model or settings.model, device=args.device or settings.device)
    if choice.warning:
        print(f"WARNING: {printable(choice.warning)}", file=sys.stderr)
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


def run_dataset(args: argparse.Namespace) -> int:
    """Every lesion x prompt kind of a NIfTI dataset: write cases.csv + summary.md, print summary."""
    from flows.cli import CommandError
    from flows.settings import Settings
    from sam2ct.evaluation import (
        DEFAULT_KINDS,
        LesionMode,
        evaluate_dataset,
        iter_nifti_cases,
        summarise,
        write_cases_csv,
        write_summary_md,
    )
    from sam2ct.registry import choose_segmenter

    if args.out is None:
        raise CommandError("--dataset needs --out DIR (where cases.csv and summary.md go)")
    if args.truth is not None or args.roi is not None:
        raise CommandError("--truth/--roi belong to --series; a dataset's labels are its truth")
    kinds = parse_kinds(args.prompt, [k.value for k in DEFAULT_KINDS])
    if args.lesions not in {m.value for m in LesionMode}:
        raise CommandError(f"Invalid '--lesions' value '{args.lesions}' - choose from "
                           f"{', '.join(LesionMode)}")
    if not args.dataset.is_dir():
        raise CommandError(f"{args.dataset}: dataset folder not found")
    settings = Settings()
    cases = iter_nifti_cases(args.dataset)
    choice = choose_segmenter(args.model or settings.model, device=args.device or settings.device)
    if choice.warning:
        print(f"WARNING: {printable(choice.warning)}", file=sys.stderr)

    def progress(r) -> None:
        logger.info("%s lesion %d %s: dice %.3f (%.2f s)", r.case, r.lesion, r.kind, r.dice,
                    r.seconds)

    csv_path = args.out / "cases.csv"

    def save_partial(partial) -> None:  # an interrupted run still leaves a valid cases.csv
        write_cases_csv(partial.results, csv_path)

    run = evaluate_dataset(cases, choice.segmenter, kinds, seed=args.seed, mode=args.lesions,
                           min_voxels=args.min_voxels, on_result=progress, on_case=save_partial)
    summary = summarise(run, choice.segmenter, kinds, dataset=str(args.dataset),
                        lesion_mode=args.lesions, seed=args.seed, warning=choice.warning)
    summary["cases_csv"] = str(write_cases_csv(run.results, csv_path))
    summary["summary_md"] = str(write_summary_md(summary, args.out / "summary.md"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_dataset_text(summary)
    return 0


def _print_dataset_text(summary: dict[str, Any]) -> None:
    print(f"model {summary['model']} {summary['model_version']}: {summary['cases']} cases, "
          f"{summary['lesion_rows']} rows, {len(summary['skipped'])} skipped")
    for kind, row in summary["kinds"].items():
        dice = "n/a" if row["mean_dice"] is None else f"{row['mean_dice']:.3f}"
        print(f"  {kind:14s} n={row['n']:<4d} mean Dice {dice}")
    print(f"wrote {summary['cases_csv']} and {summary['summary_md']}")


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
