"""SAM2CT network, checkpoints and prompt encoding: random weights in the published layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2ct.model import (
    CheckpointError,
    PointLabel,
    SAM2CTConfig,
    build_sam2ct,
    inspect_checkpoint,
    load_sam2ct,
    save_checkpoint,
)
from sam2ct.model.checkpoint import NEW_POINT_EMBEDDINGS
from sam2ct.model.memory import MemoryBank, SliceMemory
from sam2ct.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    arrow_points,
    intensity_range,
    model_view,
    point_inputs,
    preprocess_slices,
    prompt_points,
)
from sam2ct.model.propagate import encode_images, prompt_step
from sam2ct.prompts import Prompt, PromptKind

SMALL = SAM2CTConfig(image_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random SAM2CT weights saved in the published layout."""
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, build_sam2ct(SMALL, seed=0), SMALL)
    return path


def test_random_checkpoint_loads_with_no_missing_or_unexpected_keys(checkpoint: Path) -> None:
    model, report = load_sam2ct(checkpoint, "cpu")
    assert report.missing_keys == () and report.unexpected_keys == ()
    assert report.kind == "sam2ct" and report.point_embeddings == 8
    assert report.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert set(saved) == set(model.state_dict())
    key = "sam_prompt_encoder.point_embeddings.6.weight"
    assert torch.equal(model.state_dict()[key], saved[key])
    assert model.image_size == 64 and not model.training


def test_segmenter_uses_the_settings_saved_in_the_checkpoint(tmp_path: Path) -> None:
    """Not only the input size: a model trained with another HU window must segment with it."""
    from sam2ct.model.segmenter import SAM2CTSegmenter

    config = SAM2CTConfig(image_size=64, hu_window=(-1000.0, 200.0))
    path = tmp_path / "windowed.pt"
    save_checkpoint(path, build_sam2ct(config, seed=0), config)
    segmenter = SAM2CTSegmenter.from_checkpoint(path, device="cpu")
    assert segmenter.config == config
    assert SAM2CTConfig.from_dict(inspect_checkpoint(path)[0].to_dict()["config"]) == config


def test_checkpoints_run_with_the_conventions_they_were_made_with(tmp_path: Path) -> None:
    """The authors' files (no settings saved) run as published; ours saved before the
    conventions were named run as they were trained; ours saved now keep what they say."""
    from sam2ct.model.config import LEGACY, PUBLISHED
    from sam2ct.model.segmenter import SAM2CTSegmenter

    state = build_sam2ct(SMALL, seed=0).state_dict()
    published, old, custom = (tmp_path / n for n in ("published.pt", "old.pt", "custom.pt"))
    torch.save({"model": state}, published)
    torch.save({"model": state, "sam2ct_config": {"image_size": 64, "cuda_graphs": True}}, old)
    save_checkpoint(custom, build_sam2ct(SMALL, seed=0),
                    SAM2CTConfig(image_size=64, fill_hole_area=8))
    runs = {path.stem: SAM2CTSegmenter.from_checkpoint(path, device="cpu")
            for path in (published, old, custom)}
    assert runs["published"].config.conventions() == PUBLISHED
    assert runs["old"].config.conventions() == LEGACY and runs["old"].config.image_size == 64
    assert runs["custom"].config.fill_hole_area == 8
    assert [runs[k].config.conventions_name() for k in ("published", "old", "custom")] == [
        "published", "legacy", "custom: fill_hole_area=8"]
    # the decoder's dynamic multimask is built as the conventions say
    assert runs["published"].model.sam_mask_decoder.dynamic_multimask_via_stability
    assert not runs["old"].model.sam_mask_decoder.dynamic_multimask_via_stability


def test_small_holes_are_filled_as_sam2_fills_them() -> None:
    """Background components of at most 8 pixels, 8-connected, border ones too, get 0.1."""
    from sam2ct.model.postprocess import HOLE_FILL_SCORE, fill_small_holes

    logits = np.full((1, 12, 12), 5.0, dtype=np.float32)
    logits[0, 2:4, 2:6] = -3.0  # an inner hole of 8 pixels: filled
    logits[0, 7:10, 7:10] = -3.0  # 9 pixels: kept
    logits[0, 0, 10], logits[0, 1, 11] = -1.0, -1.0  # 2 pixels touching diagonally, on the border
    out = fill_small_holes(logits, 8)
    assert np.all(out[0, 2:4, 2:6] == HOLE_FILL_SCORE)
    assert np.all(out[0, 7:10, 7:10] == -3.0)
    assert out[0, 0, 10] == out[0, 1, 11] == HOLE_FILL_SCORE
    assert np.all(out[logits > 0] == 5.0)  # foreground scores untouched
    assert logits[0, 2, 2] == -3.0  # the input is left as it was


def test_plain_sam2_state_dict_reports_exactly_the_four_new_embeddings(tmp_path: Path) -> None:
    from sam2.build_sam import build_sam2

    plain = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": plain.state_dict()}, path)
    model, report = load_sam2ct(path, "cpu", SMALL)
    assert report.missing_keys == NEW_POINT_EMBEDDINGS
    assert len(report.missing_keys) == 4 and report.unexpected_keys == ()
    assert report.kind == "sam2.1" and report.point_embeddings == 4
    key = "sam_prompt_encoder.point_embeddings.1.weight"
    assert torch.equal(model.state_dict()[key], plain.state_dict()[key])


def test_other_layouts_are_clear_errors(tmp_path: Path, checkpoint: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(checkpoint, weights_only=True)["model"], bare)  # no "model" wrapper
    with pytest.raises(CheckpointError, match="published layout"):
        load_sam2ct(bare)
    extra = tmp_path / "extra.pt"
    state = torch.load(checkpoint, weights_only=True)["model"]
    state["head.extra.weight"] = torch.zeros(3)
    del state["memory_encoder.out_proj.weight"]
    torch.save({"model": state}, extra)
    report, _, _ = inspect_checkpoint(extra)
    assert report.unexpected_keys == ("head.extra.weight",)
    assert "memory_encoder.out_proj.weight" in report.missing_keys and not report.loadable
    with pytest.raises(CheckpointError, match="keys differ"):
        load_sam2ct(extra)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_sam2ct(text)


def test_line_and_arrow_label_embeddings_receive_gradients() -> None:
    model = build_sam2ct(SMALL, seed=1).train()
    feats = encode_images(model, torch.randn(1, 3, 64, 64))[0]
    coords = np.array([[10.0, 12.0], [40.0, 44.0], [30.0, 20.0], [28.0, 26.0]])
    labels = np.array([PointLabel.LINE_END, PointLabel.LINE_END, PointLabel.ARROW_HEAD,
                       PointLabel.ARROW_SECOND])
    out = prompt_step(model, feats, point_inputs(coords, labels), SMALL)
    (out.high_res_logits.sigmoid().mean() + out.ious.sum()).backward()
    tables = model.sam_prompt_encoder.point_embeddings
    for label in (4, 5, 6):
        grad = tables[label].weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"label {label} got no gradient"
    assert tables[7].weight.grad is None or tables[7].weight.grad.abs().sum() == 0


def test_preprocessing_windows_hu_and_normalises() -> None:
    slices = np.array([[[-1000.0, 0.0], [500.0, 2000.0]]], dtype=np.float32)
    x = preprocess_slices(slices, SAM2CTConfig(image_size=64))
    assert x.shape == (1, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 0, 0], (0 - mean) / std, atol=1e-5)  # -1000 HU clipped to 0
    assert torch.allclose(x[0, :, -1, -1], (1 - mean) / std, atol=1e-5)  # 2000 HU clipped to 1


def test_published_intensity_is_the_min_max_of_the_clipped_volume() -> None:
    """Clipped to [-500, 500], then the clipped volume's own minimum -> 0 and maximum -> 1."""
    soft = np.array([[[-100.0, 20.0], [60.0, 300.0]], [[0.0, 40.0], [2000.0, -50.0]]])
    published, window = SAM2CTConfig(image_size=64), SAM2CTConfig(volume_min_max=False)
    assert intensity_range(soft, published) == (-100.0, 500.0)  # 2000 clipped to 500
    assert intensity_range(soft, window) == (-500.0, 500.0)
    x = preprocess_slices(soft[:1], published, scale=intensity_range(soft, published))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 0, 0], (0 - mean) / std, atol=1e-5)  # the volume's minimum
    flat = preprocess_slices(np.full((1, 2, 2), 30.0), published, scale=(30.0, 30.0))
    assert torch.isfinite(flat).all()  # a constant volume maps to 0, not NaN


def test_prompt_points_in_the_published_orientation_swap_x_and_y() -> None:
    """The published model sees slices transposed: its x is the DICOM row, its y the column."""
    config = SAM2CTConfig()  # 1024 input, published conventions
    shape = (256, 512)  # rows, cols: the model's x (rows) scales by 4, its y (cols) by 2
    line = Prompt(PromptKind.LINE, 3, np.array([[10.0, 20.0], [30.0, 40.0]]))
    coords, labels = prompt_points(line, shape, config)
    assert labels.tolist() == [4, 4] and coords.tolist() == [[80.0, 20.0], [160.0, 60.0]]
    arrow = Prompt(PromptKind.ARROW, 3, np.array([[100.0, 50.0], [200.0, 50.0]]))
    coords, labels = prompt_points(arrow, shape, config)
    assert labels.tolist() == [6, 5]
    assert np.allclose(coords, [[200.0, 200.0], [200.0, 264.0]])  # 64 px towards the tail
    assert model_view(np.zeros((2, 256, 512)), config).shape == (2, 512, 256)


def test_prompt_points_labels_and_scaling() -> None:
    config = SAM2CTConfig(transpose_slices=False)  # 1024 input, arrow second point 64 px away
    shape = (256, 512)  # rows, cols: x scales by 2, y by 4
    line = Prompt(PromptKind.LINE, 3, np.array([[10.0, 20.0], [30.0, 40.0]]))
    coords, labels = prompt_points(line, shape, config)
    assert labels.tolist() == [4, 4] and coords.tolist() == [[20.0, 80.0], [60.0, 160.0]]
    bidir = Prompt(PromptKind.BIDIRECTIONAL, 3, np.array([[0, 0], [8, 0], [4, -2], [4, 2]]))
    assert prompt_points(bidir, shape, config)[1].tolist() == [4, 4, 4, 4]
    arrow = Prompt(PromptKind.ARROW, 3, np.array([[100.0, 50.0], [200.0, 50.0]]))
    coords, labels = prompt_points(arrow, shape, config)
    assert labels.tolist() == [6, 5]
    assert np.allclose(coords, [[200.0, 200.0], [264.0, 200.0]])  # 64 px towards the tail
    short = arrow_points(np.array([0.0, 0.0]), np.array([3.0, 4.0]), 64.0)
    assert np.allclose(short[1], [3.0, 4.0])  # shorter than the distance: the real tail
    ellipse = Prompt(PromptKind.ELLIPSE, 3, np.array([[10, 30], [50, 30], [30, 20], [30, 40]]))
    coords, labels = prompt_points(ellipse, shape, config)
    assert labels.tolist() == [2, 3] and coords.tolist() == [[20.0, 80.0], [100.0, 160.0]]
    point = Prompt(PromptKind.POINT, 3, np.array([[5.0, 5.0]]))
    assert prompt_points(point, shape, config)[1].tolist() == [1]


def test_memory_bank_uses_sam2ct_temporal_encoding_convention() -> None:
    model = build_sam2ct(SMALL, seed=0)
    bank = MemoryBank(SMALL)
    assert [bank.tpos_index(d) for d in (None, 1, 2, 6)] == [6, 5, 4, 0]  # 6 - |d|; prompt 6

    def memory(value: float) -> SliceMemory:
        return SliceMemory(torch.full((1, 64, 4, 4), value), torch.zeros(1, 64, 4, 4),
                           torch.full((1, 256), value))

    bank.set_prompt(10, memory(0.0))
    for i in range(11, 20):
        bank.add(i, memory(float(i)))
    assert min(bank.recent) == 12  # only what is within 8 of the newest is kept
    tokens, pos, n_ptr = bank.gather(model, 20, 30)
    spatial = 1 + 6  # prompt + slices 14..19 (|d| <= 6)
    pointers = (1 + 8) * 4  # prompt + slices 12..19 (|d| <= 8), 4 tokens each
    assert tokens.shape == (spatial * 16 + pointers, 1, 64) and n_ptr == pointers
    # the slice at distance 1 (19) carries tpos row 5, the prompt row 6
    rows = {float(tokens[k * 16, 0, 0]): k for k in range(spatial)}
    assert torch.allclose(pos[rows[19.0] * 16], model.maskmem_tpos_enc[5, 0, 0])
    assert torch.allclose(pos[rows[0.0] * 16], model.maskmem_tpos_enc[6, 0, 0])
    with pytest.raises(ValueError, match="no prompt memory"):
        MemoryBank(SMALL).gather(model, 3, 10)


def test_model_inspect_cli(checkpoint: Path, tmp_path: Path, capsys) -> None:
    import json

    from flows.cli import main

    assert main(["model", "inspect", str(checkpoint), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "sam2ct" and doc["loadable"] and doc["point_embeddings"] == 8
    assert doc["missing_keys"] == [] and doc["unexpected_keys"] == []
    assert doc["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert 38_000_000 < doc["parameters"] < 40_000_000  # SAM2.1 Hiera-T + 4 embeddings
    assert doc["conventions"] == "published" and doc["config"]["transpose_slices"] is True
    assert main(["model", "inspect", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "point embeddings: 8" in text and "conventions:      published" in text
    assert "  pointer_tpos_frames = 8" in text
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    assert main(["model", "inspect", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "junk.pt: not a readable torch checkpoint" in err and len(err.splitlines()) == 1
