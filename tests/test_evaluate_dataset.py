"""`sam2ct evaluate --dataset`: every lesion x prompt kind of a NIfTI dataset, CSV + Markdown."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from sam2ct.evaluation import (
    LesionMode,
    LesionResult,
    Skip,
    evaluate_dataset,
    split_lesions,
    summarise_kind,
    summary_markdown,
)

KINDS = ("line", "bidirectional", "arrow")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ball(shape=(12, 48, 48), centre=(6, 24, 24), radius_mm=10.0, spacing=(3.0, 1.0, 1.0)):
    z, y, x = np.indices(shape)
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip((z, y, x), centre, spacing, strict=True))
    return d2 < radius_mm**2


def _write_case(folder: Path, name: str, label: np.ndarray) -> None:
    """A tiny CT-like NIfTI pair: a 60 HU ball in -800 HU lung, 3 x 1 x 1 mm voxels."""
    from dicom_io.nifti import write_nifti

    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    image = np.where(_ball(label.shape), 60, -800).astype(np.int16)
    write_nifti(image, affine, folder / f"{name}_image.nii.gz")
    write_nifti(label.astype(np.uint8), affine, folder / f"{name}_label.nii.gz")


@pytest.fixture(scope="module")
def synth_dataset(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The synthetic studies as an nnU-Net style NIfTI dataset (one label value per lesion)."""
    from dicom_io.nifti import read_nifti, write_nifti
    from dicom_io.volume import load_series

    root = tmp_path_factory.mktemp("nifti-dataset")
    lesions = 0
    for study in json.loads((synth_dir / "manifest.json").read_text())["studies"]:
        volume = load_series(synth_dir / study["ct_dir"])
        name = study["ct_dir"].split("/")[0]
        write_nifti(volume.array.astype(np.int16), volume.affine,
                    root / "imagesTr" / f"{name}_0000.nii.gz")
        label = np.zeros(volume.array.shape, np.uint8)
        for value, lesion in enumerate(study["lesions"], start=1):
            truth, _ = read_nifti(synth_dir / lesion["truth"])
            label[truth > 0] = value
        write_nifti(label, volume.affine, root / "labelsTr" / f"{name}.nii.gz")
        lesions += len(study["lesions"])
    return root, lesions


def test_split_lesions_components_largest_first_and_specks_skipped():
    label = np.zeros((10, 40, 40), np.uint8)
    label[2:5, 2:6, 2:6] = 1  # 48 voxels
    label[2:8, 20:30, 20:30] = 2  # 600 voxels
    label[9, 39, 39] = 1  # a one-voxel speck
    parts = split_lesions(label, LesionMode.COMPONENTS, min_voxels=10)
    assert [int(p.sum()) for p in parts] == [600, 48]
    [whole] = split_lesions(label, "whole", min_voxels=10)
    assert int(whole.sum()) == 649
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # corner-touching: one 26-connected lesion
    assert len(split_lesions(diagonal, min_voxels=1)) == 1


def test_summary_handles_empty_predictions_and_escapes_nothing_in_tables():
    rows = [LesionResult("a", 1, "line", 0.8, 2.0, -10.0, 1.0, 0.1, "classical"),
            LesionResult("a", 2, "line", 0.0, float("inf"), -100.0, -20.0, 0.1, "classical")]
    s = summarise_kind("line", rows)
    assert s.n == 2 and s.empty_predictions == 1
    assert s.mean_dice == pytest.approx(0.4) and s.mean_hd95_mm == pytest.approx(2.0)
    assert s.mean_abs_volume_error_pct == pytest.approx(55.0)
    md = summary_markdown({"model": "classical", "model_version": "1", "checkpoint_sha256": None,
                           "cases": 1, "lesion_rows": 2, "skipped": [],
                           "kinds": {"line": {k: v for k, v in vars(s).items()}}})
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 3 and len({line.count("|") for line in table}) == 1


@pytest.mark.slow
def test_synthetic_dataset_classical(synth_dataset: tuple[Path, int], tmp_path: Path, capsys):
    root, lesions = synth_dataset
    out = tmp_path / "out"
    code = main(["evaluate", "--dataset", str(root), "--prompt", ",".join(KINDS), "--model",
                 "classical", "--seed", "3", "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)  # one JSON document, nothing else on stdout
    rows = _read_csv(out / "cases.csv")
    assert len(rows) == lesions * len(KINDS) and summary["lesion_rows"] == len(rows)
    assert list(rows[0]) == ["case", "lesion", "kind", "dice", "hd95_mm", "volume_error_pct",
                             "long_axis_error_mm", "seconds", "model"]
    assert {r["kind"] for r in rows} == set(KINDS) and {r["model"] for r in rows} == {"classical"}
    assert {r["case"] for r in rows} == {"study-001", "study-002"}
    dice = {k: [float(r["dice"]) for r in rows if r["kind"] == k] for k in KINDS}
    assert all(0.0 <= d <= 1.0 for values in dice.values() for d in values)
    assert np.mean(dice["line"]) > 0.5
    assert summary["kinds"]["line"]["mean_dice"] == pytest.approx(np.mean(dice["line"]), abs=1e-3)
    assert all(float(r["seconds"]) > 0 for r in rows)
    md = (out / "summary.md").read_text()
    for kind in KINDS:
        assert f"## Prompt: {kind}" in md
        assert summary["kinds"][kind]["n"] == lesions
    assert md.count("| n | mean Dice | median Dice |") == len(KINDS)
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "summary.md"]  # no temp left


def test_bad_cases_are_recorded_skips(tmp_path: Path, capsys):
    _write_case(tmp_path / "data", "good", _ball())
    _write_case(tmp_path / "data", "empty", np.zeros((12, 48, 48), bool))
    _write_case(tmp_path / "data", "speck", np.pad(np.ones((1, 2, 2), bool), ((5, 6), (20, 26),
                                                                               (20, 26))))
    (tmp_path / "data" / "corrupt_image.nii.gz").write_bytes(b"not a nifti file")
    (tmp_path / "data" / "corrupt_label.nii.gz").write_bytes(b"not a nifti file")
    code = main(["evaluate", "--dataset", str(tmp_path / "data"), "--prompt", "line",
                 "--model", "classical", "--out", str(tmp_path / "out"), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["cases"] == 4 and summary["lesion_rows"] == 1
    reasons = {s["case"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"corrupt", "empty", "speck"}
    assert "unreadable" in reasons["corrupt"] and "empty" in reasons["empty"]
    assert reasons["speck"] == "1 lesion(s) smaller than 10 voxels"
    [row] = _read_csv(tmp_path / "out" / "cases.csv")
    assert row["case"] == "good" and float(row["dice"]) > 0.5
    assert "empty" in (tmp_path / "out" / "summary.md").read_text().split("## Skipped")[1]


def test_evaluate_dataset_library_records_skip_objects():
    from sam2ct.classical import ClassicalSegmenter
    from sam2ct.training.data import LesionCase

    label = _ball()
    case = LesionCase("tiny", np.where(label, 60.0, -800.0).astype(np.float32), label,
                      (3.0, 1.0, 1.0))
    seen: list[int] = []
    run = evaluate_dataset([Skip("broken", "unreadable"), case], ClassicalSegmenter(),
                           ["line", "arrow"], seed=1,
                           on_case=lambda partial: seen.append(len(partial.results)))
    assert seen == [0, 2]  # called after each case with the rows so far
    assert run.cases == 2 and [s.case for s in run.skipped] == ["broken"]
    assert [(r.lesion, r.kind) for r in run.results] == [(1, "line"), (1, "arrow")]
    again = evaluate_dataset([case], ClassicalSegmenter(), ["arrow"], seed=1)
    assert again.results[0].dice == run.results[1].dice  # same seed, same arrow, same mask


@pytest.mark.parametrize(("argv", "needle"), [
    (["--prompt", "line,foo"], "'foo'"),
    (["--lesions", "blobs"], "'blobs'"),
    (["--truth", "x.nii.gz"], "--truth"),
    (["--min-voxels", "0"], "--min-voxels"),
])
def test_bad_dataset_arguments_are_one_error_line(argv, needle, tmp_path: Path, capsys):
    code = main(["evaluate", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--model", "classical", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_missing_out_and_empty_dataset(tmp_path: Path, capsys):
    assert main(["evaluate", "--dataset", str(tmp_path), "--model", "classical"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--model", "classical"]) == 2
    assert "no NIfTI image/label pair" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                 "--model", "classical"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["evaluate", "--series", str(tmp_path), "--model", "classical"]) == 2
    assert "--truth" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_path_reaches_sam2ct(tmp_path: Path, capsys):
    """A .pt path goes through choose_segmenter to SAM2CT (random weights at 64 px: no Dice claim)."""
    import torch

    from sam2ct.model import SAM2CTConfig, build_sam2ct, save_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster on the shared 2-core machine
    try:
        small = SAM2CTConfig(image_size=64)
        checkpoint = tmp_path / "random.pt"
        save_checkpoint(checkpoint, build_sam2ct(small, seed=0), small)
        _write_case(tmp_path / "data", "tiny", _ball())
        code = main(["evaluate", "--dataset", str(tmp_path / "data"), "--prompt", "line",
                     "--model", str(checkpoint), "--device", "cpu", "--out",
                     str(tmp_path / "out"), "--json"])
    finally:
        torch.set_num_threads(threads)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["model"] == "sam2ct" and summary["warning"] is None
    assert summary["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    [row] = _read_csv(tmp_path / "out" / "cases.csv")
    assert row["model"] == "sam2ct" and 0.0 <= float(row["dice"]) <= 1.0
    assert summary["checkpoint_sha256"][:12] in (tmp_path / "out" / "summary.md").read_text()


def test_text_output_names_the_files(tmp_path: Path, capsys):
    _write_case(tmp_path / "data", "tiny", _ball())
    code = main(["evaluate", "--dataset", str(tmp_path / "data"), "--prompt", "bidirectional",
                 "--model", "classical", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "bidirectional" in out and "n=1" in out and "summary.md" in out
