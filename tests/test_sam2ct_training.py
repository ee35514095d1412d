"""SAM2CT training: NIfTI cases, simulated-prompt clips, SAM2's loss, overfitting, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flows.cli import main
from sam2ct.model import SAM2CTConfig, build_sam2ct, load_sam2ct
from sam2ct.prompts import PromptKind
from sam2ct.training import (
    LesionCase,
    TrainConfig,
    find_nifti_pairs,
    frame_loss,
    load_nifti_cases,
    make_clip,
    train_step,
)
from sam2ct.training.loop import make_optimizer

SMALL = SAM2CTConfig(image_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(seed: int = 0, shape: tuple[int, int, int] = (10, 48, 48)) -> LesionCase:
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    lesion = ((z - 5) / 3) ** 2 + ((y - 24) / 8) ** 2 + ((x - 22) / 10) ** 2 < 1
    noise = np.random.default_rng(seed).normal(0, 20, shape)
    image = (np.where(lesion, 60.0, -300.0) + noise).astype(np.float32)
    return LesionCase(f"case{seed}", image, lesion.astype(np.uint8), (3.0, 1.0, 1.0))


def _write_pair(root: Path, case: LesionCase) -> None:
    for folder, name, array in (("imagesTr", f"{case.name}_0000.nii.gz", case.image),
                                ("labelsTr", f"{case.name}.nii.gz", case.label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(img, str(root / folder / name))


@pytest.fixture(scope="module")
def nifti_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nifti")
    _write_pair(root, _case(0))
    _write_pair(root, _case(1))
    return root


def test_nifti_pairs_load_as_z_rows_cols(nifti_dir: Path) -> None:
    assert [name for name, _, _ in find_nifti_pairs(nifti_dir)] == ["case0", "case1"]
    cases = load_nifti_cases(nifti_dir)
    assert cases[0].image.shape == (10, 48, 48) and cases[0].spacing == (3.0, 1.0, 1.0)
    assert np.array_equal(cases[0].label, _case(0).label)
    with pytest.raises(ValueError, match="label is empty"):
        LesionCase("empty", np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), (1.0, 1.0, 1.0))


def test_clip_starts_at_the_prompted_slice_with_simulated_prompt() -> None:
    case = _case()
    for seed in range(4):
        clip = make_clip(case, SMALL, np.random.default_rng(seed), length=8)
        assert clip.slices[0] == clip.prompt.slice_index == 5  # largest lesion slice
        assert len(clip.slices) in (5, 6) and abs(clip.slices[1] - 5) == 1  # cut at the end
        assert clip.images.shape == (len(clip.slices), 3, 64, 64)
        assert clip.targets[0].sum() > 0
    kinds = {make_clip(case, SMALL, np.random.default_rng(s)).prompt.kind for s in range(12)}
    assert kinds == {PromptKind.LINE, PromptKind.BIDIRECTIONAL, PromptKind.ARROW}
    arrow = next(c for c in (make_clip(case, SMALL, np.random.default_rng(s)) for s in range(12))
                 if c.prompt.kind is PromptKind.ARROW)
    assert arrow.points["point_labels"].tolist() == [[6, 5]]


@pytest.mark.parametrize("transpose", [True, False])
def test_a_training_clip_shows_the_model_what_inference_shows_it(transpose: bool) -> None:
    """Same prompt: the same pixels (orientation, intensity scaling of the whole volume) and the
    same points reach the network in training as in inference."""
    from dataclasses import replace

    from sam2ct.model import SAM2CTSegmenter

    config = replace(SMALL, transpose_slices=transpose)
    case = _case(shape=(10, 40, 56))  # not square: a transposition shows
    case = LesionCase(case.name, case.image + np.linspace(0, 300, 56, dtype=np.float32),
                      case.label, case.spacing)  # columns differ from rows
    clip = make_clip(case, config, np.random.default_rng(3))
    model = build_sam2ct(config, seed=0)
    images, points = [], []
    hooks = [model.image_encoder.register_forward_pre_hook(lambda m, a: images.append(a[0])),
             model.sam_prompt_encoder.register_forward_pre_hook(
                 lambda m, a, kw: points.append(kw["points"]), with_kwargs=True)]
    try:
        SAM2CTSegmenter(model, config).segment(case.image, case.spacing, [clip.prompt])
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.allclose(images[0][0], clip.images[0], atol=1e-5)  # the prompt slice
    coords, labels = points[0]
    assert torch.allclose(coords, clip.points["point_coords"])
    assert torch.equal(labels, clip.points["point_labels"])
    # the target is the lesion in the model's view
    lesion = torch.as_tensor(case.label[clip.prompt.slice_index], dtype=torch.float32)
    lesion = lesion.T if transpose else lesion
    resized = torch.nn.functional.interpolate(lesion[None, None], size=(64, 64),
                                              mode="bilinear", align_corners=False)[0, 0] > 0.5
    assert torch.equal(clip.targets[0] > 0, resized)


def test_loss_is_low_for_the_right_mask_and_high_for_the_wrong_one() -> None:
    target = torch.zeros(1, 32, 32)
    target[0, 8:24, 8:24] = 1
    good = (target * 20 - 10).unsqueeze(1)
    bad = -good
    ious = torch.ones(1, 1)
    score = torch.full((1, 1), 10.0)
    low = frame_loss(good, ious, score, target)
    high = frame_loss(bad, ious, score, target)
    assert low["total"] < 0.01 < 1.0 < high["total"]
    both = frame_loss(torch.cat([bad, good], dim=1), torch.ones(1, 2), score, target)
    assert torch.isclose(both["total"], low["total"])  # the best of the masks is supervised
    absent = frame_loss(bad, ious, torch.full((1, 1), -10.0), torch.zeros(1, 32, 32))
    assert absent["total"] < 0.01  # no object, object score says so: mask terms do not count


@pytest.mark.slow
def test_training_overfits_one_clip() -> None:
    model = build_sam2ct(SMALL, seed=0)
    clip = make_clip(_case(), SMALL, np.random.default_rng(3), length=4)
    config = TrainConfig(steps=30, lr=1e-4, amp=False)
    optimizer = make_optimizer(model, config)
    losses = [train_step(model, optimizer, clip, SMALL, config)["total"]]
    while losses[-1] > losses[0] / 2 and len(losses) < 30:
        losses.append(train_step(model, optimizer, clip, SMALL, config)["total"])
    assert losses[-1] <= losses[0] / 2, f"loss did not halve in 30 steps: {losses}"


@pytest.mark.slow
def test_train_cli_writes_published_checkpoint_and_resumes(nifti_dir: Path, tmp_path: Path,
                                                           capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(nifti_dir), "--init", "random", "--out", str(out),
            "--image-size", "64", "--device", "cpu", "--clip-length", "2", "--log-every", "1",
            "--lr", "1e-4", "--json"]
    assert main(argv + ["--steps", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["steps_done"] == 2 and first["cases"] == 2
    model, report = load_sam2ct(Path(first["checkpoint"]))
    assert report.kind == "sam2ct" and report.missing_keys == () and model.image_size == 64
    assert main(argv + ["--steps", "3"]) == 0  # resumes from last.pt at step 2
    second = json.loads(capsys.readouterr().out)
    assert second["steps_done"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3] and all(row["total"] > 0 for row in log)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    # and the result starts a new run through --init
    again = tmp_path / "again"
    assert main(argv[:4] + [str(out / "sam2ct.pt")] + argv[5:6] + [str(again)] + argv[7:]
                + ["--steps", "1"]) == 0


def test_train_cli_reports_an_empty_data_folder(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", str(tmp_path), "--init", "random", "--out",
               str(tmp_path / "o"), "--image-size", "64", "--device", "cpu"])
    assert rc == 2 and "no training cases" in capsys.readouterr().err


@pytest.mark.slow
def test_dicom_rtstruct_cases_load_through_flows(lung1_001: Path, tmp_path: Path) -> None:
    from flows.cli.train import load_dicom_cases

    shutil.copytree(lung1_001, tmp_path / "LUNG1-001")
    [case] = load_dicom_cases(tmp_path, "GTV-1")
    assert case.image.shape == (134, 512, 512) and case.label.any()
    assert case.spacing[0] == pytest.approx(3.0)
