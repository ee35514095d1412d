"""Dataset evaluation: every lesion of every image/label pair, every prompt kind, one model.

A *lesion* is, by default, one 26-connected component of a case's label (``label > 0``): that is
how lesion benchmarks count (one RECIST measurement per lesion), and a label with several
tumours then gives one simulated prompt per tumour. ``LesionMode.WHOLE`` takes the whole label
as one lesion instead. Lesions are numbered 1, 2, ... from the largest (not by label value).
Components smaller than ``min_voxels`` are counted as a skip (no prompt can be drawn on a speck).
Each lesion is prompted once per kind (``sam2ct.simulate``; the arrow's direction is seeded by
seed, case, lesion and kind, so results do not depend on loop order), segmented on the full
volume, and scored against that lesion alone (``sam2ct.metrics``). An empty prediction scores
Dice 0 and an undefined HD95 (empty in the CSV, left out of the mean HD95 and counted as
``empty_predictions``).

Example
-------
>>> cases = iter_nifti_cases(Path("dataset"))  # doctest: +SKIP
>>> run = evaluate_dataset(cases, segmenter, [PromptKind.LINE], seed=0)  # doctest: +SKIP
>>> write_cases_csv(run.results, Path("out/cases.csv"))  # doctest: +SKIP
>>> write_summary_md(summarise(run, segmenter), Path("out/summary.md"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from sam2ct.files import replaced_on_success
from sam2ct.metrics import evaluate
from sam2ct.prompts import PromptKind
from sam2ct.segmenter import Segmenter
from sam2ct.simulate import simulate_prompt

if TYPE_CHECKING:
    from sam2ct.training.data import LesionCase

DEFAULT_KINDS = (PromptKind.LINE, PromptKind.BIDIRECTIONAL, PromptKind.ARROW)
CSV_COLUMNS = ("case", "lesion", "kind", "dice", "hd95_mm", "volume_error_pct",
               "long_axis_error_mm", "seconds", "model")


class LesionMode(StrEnum):
    """How a case's label is split into lesions."""

    COMPONENTS = "components"  # each 26-connected component of label > 0
    WHOLE = "whole"  # the whole label > 0 as one lesion


@dataclass(frozen=True)
class LesionResult:
    """One row of ``cases.csv``: a lesion of a case, prompted with one kind, scored."""

    case: str
    lesion: int
    kind: str
    dice: float
    hd95_mm: float  # infinity when the prediction is empty
    volume_error_pct: float
    long_axis_error_mm: float
    seconds: float
    model: str


@dataclass(frozen=True)
class Skip:
    """A case or lesion that could not be evaluated, and why."""

    case: str
    reason: str
    lesion: int | None = None
    kind: str | None = None


@dataclass
class DatasetRun:
    """Everything one dataset evaluation produced."""

    results: list[LesionResult] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    cases: int = 0


@dataclass(frozen=True)
class KindSummary:
    """Aggregates for one prompt kind (HD95 mean over non-empty predictions only)."""

    kind: str
    n: int
    mean_dice: float
    median_dice: float
    mean_hd95_mm: float
    mean_abs_volume_error_pct: float
    mean_abs_long_axis_error_mm: float
    empty_predictions: int


def iter_nifti_cases(root: Path) -> Iterator[LesionCase | Skip]:
    """Read the NIfTI pairs under ``root`` one at a time (``find_nifti_pairs`` layouts).

    Unlike ``load_nifti_cases`` this holds one case in memory at once, and yields a ``Skip``
    for an unreadable pair or an empty label instead of raising. Raises NotADirectoryError
    for a missing ``root`` and ValueError when it holds no pair at all.
    """
    from sam2ct.training.data import find_nifti_pairs  # the package brings torch: only here

    pairs = find_nifti_pairs(root)
    if not pairs:
        raise ValueError(f"dataset {root}: no NIfTI image/label pair found (layouts: "
                         "imagesTr/X_0000 + labelsTr/X, images/X + labels/X, X_image + X_label)")
    return _read_pairs(pairs)


def _read_pairs(pairs: list[tuple[str, Path, Path]]) -> Iterator[LesionCase | Skip]:
    from sam2ct.training.data import read_nifti_case

    for name, image, label in pairs:
        try:
            yield read_nifti_case(name, image, label)
        except ValueError as exc:
            yield Skip(name, str(exc))


def split_lesions(label: np.ndarray, mode: LesionMode | str = LesionMode.COMPONENTS,
                  min_voxels: int = 10) -> list[np.ndarray]:
    """The lesion masks of a label, largest first (see the module docstring for the rules)."""
    return list(iter_lesions(label, mode, min_voxels))


def iter_lesions(label: np.ndarray, mode: LesionMode | str = LesionMode.COMPONENTS,
                 min_voxels: int = 10) -> Iterator[np.ndarray]:
    """Like ``split_lesions``, one full-size mask at a time (a label may hold dozens)."""
    labelled, kept, _ = _components(label, LesionMode(mode), min_voxels)
    for value in kept:
        yield labelled == value


def _components(label: np.ndarray, mode: LesionMode,
                min_voxels: int) -> tuple[np.ndarray, list[int], int]:
    """(labelled array, its values kept largest first, how many were smaller than min_voxels)."""
    mask = np.asarray(label) > 0
    if mode is LesionMode.WHOLE:
        labelled, count = mask.astype(np.int32), int(mask.any())
    else:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    kept = [int(i) + 1 for i in order if sizes[i] >= min_voxels]
    return labelled, kept, count - len(kept)


def _rng(seed: int, case: str, lesion: int, kind: str) -> np.random.Generator:
    """A generator that depends on the lesion and kind only, not on the loop order."""
    return np.random.default_rng([seed, zlib.crc32(case.encode()), lesion, zlib.crc32(kind.encode())])


def evaluate_lesion(case: LesionCase, lesion: int, truth: np.ndarray, kind: PromptKind,
                    segmenter: Segmenter, seed: int = 0) -> LesionResult:
    """Simulate a ``kind`` prompt on ``truth``, segment ``case.image`` with it, score the mask."""
    prompt = simulate_prompt(truth, kind, case.spacing, _rng(seed, case.name, lesion, kind.value),
                             identifier=f"{case.name}#{lesion}")
    start = time.perf_counter()
    [mask] = segmenter.segment(case.image, case.spacing, [prompt])
    seconds = time.perf_counter() - start
    scores = evaluate(mask, truth, case.spacing)
    return LesionResult(case.name, lesion, kind.value, scores.dice, scores.hd95_mm,
                        scores.volume_error_pct, scores.long_axis_error_mm, seconds,
                        segmenter.name)


def evaluate_dataset(cases: Iterable[LesionCase | Skip], segmenter: Segmenter,
                     kinds: Sequence[PromptKind | str] = DEFAULT_KINDS, seed: int = 0,
                     mode: LesionMode | str = LesionMode.COMPONENTS, min_voxels: int = 10,
                     on_result: Callable[[LesionResult], None] | None = None,
                     on_case: Callable[[DatasetRun], None] | None = None) -> DatasetRun:
    """Evaluate ``segmenter`` on every lesion of every case with every prompt kind.

    A lesion whose prompt cannot be simulated or segmented (ValueError) is recorded as a skip.
    ``on_result`` is called after each scored lesion (progress), ``on_case`` with the run so far
    after each case (e.g. to save partial results).
    """
    kinds = [PromptKind(k) for k in kinds]
    if not kinds:
        raise ValueError("Invalid 'kinds' value [] - at least one prompt kind is needed")
    mode = LesionMode(mode)
    run = DatasetRun()
    for case in cases:
        run.cases += 1
        if isinstance(case, Skip):
            run.skipped.append(case)
        else:
            _evaluate_case(case, segmenter, kinds, seed, mode, min_voxels, run, on_result)
        if on_case is not None:
            on_case(run)
    return run


def _evaluate_case(case: LesionCase, segmenter: Segmenter, kinds: Sequence[PromptKind],
                   seed: int, mode: LesionMode, min_voxels: int, run: DatasetRun,
                   on_result: Callable[[LesionResult], None] | None) -> None:
    labelled, kept, small = _components(case.label, mode, min_voxels)
    if small:
        run.skipped.append(Skip(case.name, f"{small} lesion(s) smaller than {min_voxels} voxels"))
    for number, value in enumerate(kept, start=1):
        truth = labelled == value
        for kind in kinds:
            try:
                result = evaluate_lesion(case, number, truth, kind, segmenter, seed)
            except ValueError as exc:
                run.skipped.append(Skip(case.name, str(exc), number, kind.value))
                continue
            run.results.append(result)
            if on_result is not None:
                on_result(result)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def summarise_kind(kind: str, results: Sequence[LesionResult]) -> KindSummary:
    """Aggregate the rows of one prompt kind."""
    rows = [r for r in results if r.kind == kind]
    dice = [r.dice for r in rows]
    finite = [r.hd95_mm for r in rows if math.isfinite(r.hd95_mm)]
    return KindSummary(
        kind, len(rows), _mean(dice), float(np.median(dice)) if dice else math.nan, _mean(finite),
        _mean([abs(r.volume_error_pct) for r in rows if math.isfinite(r.volume_error_pct)]),
        _mean([abs(r.long_axis_error_mm) for r in rows]), len(rows) - len(finite))


def summarise(run: DatasetRun, segmenter: Segmenter,
              kinds: Sequence[PromptKind | str] = DEFAULT_KINDS, **extra: Any) -> dict[str, Any]:
    """The run's summary as a JSON-safe dict (NaN/inf become None); ``extra`` keys are added."""
    per_kind = {PromptKind(k).value: _json_safe(asdict(summarise_kind(PromptKind(k).value,
                                                                      run.results)))
                for k in kinds}
    return {
        "model": segmenter.name,
        "model_version": segmenter.version,
        "checkpoint_sha256": segmenter.checkpoint_sha256,
        **extra,
        "cases": run.cases,
        "lesion_rows": len(run.results),
        "kinds": per_kind,
        "skipped": [_json_safe(asdict(s)) for s in run.skipped],
    }


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else
                round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def _write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) whole or not at all."""
    path = Path(path)
    with replaced_on_success(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_cases_csv(results: Iterable[LesionResult], path: Path) -> Path:
    """``cases.csv``: one row per case x lesion x prompt kind (empty HD95 = empty prediction)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        row = asdict(r)
        writer.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])
    return _write_atomic(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4f}"
    return value


_MD_COLUMNS = (("n", "n"), ("mean_dice", "mean Dice"), ("median_dice", "median Dice"),
               ("mean_hd95_mm", "mean HD95 (mm)"),
               ("mean_abs_volume_error_pct", "mean abs volume error (%)"),
               ("mean_abs_long_axis_error_mm", "mean abs long-axis error (mm)"),
               ("empty_predictions", "empty predictions"))


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: a header, then one table per prompt kind, then the skips."""
    version = summary["model_version"]
    lines = ["# SAM2CT dataset evaluation", "",
             f"- dataset: `{summary.get('dataset', '')}`",
             f"- model: {summary['model']} {version}"
             + (f" (checkpoint sha256 {summary['checkpoint_sha256'][:12]})"
                if summary["checkpoint_sha256"] else ""),
             f"- cases: {summary['cases']}, scored rows: {summary['lesion_rows']}, "
             f"skipped: {len(summary['skipped'])}",
             f"- lesions: {summary.get('lesion_mode', '')}, seed: {summary.get('seed', '')}", ""]
    for kind, row in summary["kinds"].items():
        lines += [f"## Prompt: {kind}", "",
                  "| " + " | ".join(title for _, title in _MD_COLUMNS) + " |",
                  "|" + "---:|" * len(_MD_COLUMNS),
                  "| " + " | ".join(_md_value(row[key]) for key, _ in _MD_COLUMNS) + " |", ""]
    if summary["skipped"]:
        lines += ["## Skipped", ""]
        lines += [f"- {s['case']}" + (f" lesion {s['lesion']}" if s["lesion"] else "")
                  + (f" ({s['kind']})" if s["kind"] else "") + f": {s['reason']}"
                  for s in summary["skipped"]]
        lines.append("")
    return "\n".join(lines)


def _md_value(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_summary_md(summary: dict[str, Any], path: Path) -> Path:
    """``summary.md`` (see ``summary_markdown``), written temp-then-rename."""
    return _write_atomic(path, summary_markdown(summary))
