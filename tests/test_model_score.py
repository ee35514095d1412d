"""The model's own score: SAM2CT gives one per mask from its decoder's heads, the classical model
none, and a low one becomes the ``model-score`` flag of the mask where it is made."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conformance_cases import Case, load_case, parity_weights
from conftest import shared

from db.records import SegStatus
from dicom_io.volume import load_series
from flows.segment_series import read_gsps_files, segment_series
from sam2ct.classical import ClassicalSegmenter
from sam2ct.model import SAM2CTConfig, SAM2CTSegmenter, build_sam2ct
from sam2ct.model.preprocess import (
    intensity_range,
    model_view,
    point_inputs,
    preprocess_slices,
    prompt_points,
)
from sam2ct.model.propagate import encode_images, prompt_step
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.registry import Choice
from sam2ct.segmenter import ScoringSegmenter, segment_with_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACING = (1.0, 1.0, 1.0)
#: added to the IoU head's output biases: the predicted IoU falls to ~1e-9, every output by
#: the same amount, so the decoder still picks the same mask
IOU_SHIFT = -20.0


@pytest.fixture(scope="module")
def case() -> Case:
    """The shared conformance case: 12 LUNG1 slices at 128 px and a line prompt."""
    return load_case(shared("parity/lung1-001-line-128"))


@pytest.fixture(scope="module")
def segmenter(case: Case) -> SAM2CTSegmenter:
    """SAM2CT with the deterministic conformance weights (their masks are not empty)."""
    config = SAM2CTConfig(image_size=case.image_size)
    model = build_sam2ct(config)
    model.load_state_dict(parity_weights(shared("../tools")).fill(model.state_dict()))
    return SAM2CTSegmenter(model, config)


def unsure(segmenter: SAM2CTSegmenter) -> SAM2CTSegmenter:
    """The same network with its IoU head shifted down by ``IOU_SHIFT``: a low own score."""
    model = copy.deepcopy(segmenter.model)
    with torch.no_grad():
        model.sam_mask_decoder.iou_prediction_head.layers[-1].bias += IOU_SHIFT
    return SAM2CTSegmenter(model, segmenter.config)


def prompts(case: Case) -> list[Prompt]:
    """The case's line, and the same line two slices lower."""
    return [Prompt(PromptKind(case.kind), z, case.points_xy, f"{case.name}-{z}")
            for z in (case.slice_index, case.slice_index - 2)]


def heads_score(segmenter: SAM2CTSegmenter, case: Case, prompt: Prompt) -> float:
    """The score by its definition, from the prompted slice alone: predicted IoU of the chosen
    (single) mask times the sigmoid of the object score logit."""
    config, model = segmenter.config, segmenter.model
    view = model_view(case.hu, config)
    images = preprocess_slices(view[prompt.slice_index:prompt.slice_index + 1], config, "cpu",
                               intensity_range(case.hu, config))
    coords, labels = prompt_points(prompt, case.hu.shape[1:], config)
    with torch.inference_mode():
        [feats] = encode_images(model, images)
        out = prompt_step(model, feats, point_inputs(coords, labels), config)
    assert out.ious.shape == (1, 1)
    return float(out.ious[0, 0] * torch.sigmoid(out.object_score_logits[0, 0]))


def test_sam2ct_gives_one_score_per_prompt_with_segments_masks(segmenter, case) -> None:
    assert isinstance(segmenter, ScoringSegmenter)
    scored = segment_with_scores(segmenter, case.hu, SPACING, prompts(case))
    masks = segmenter.segment(case.hu, SPACING, prompts(case))
    assert len(scored) == len(masks) == 2
    for (mask, score), plain, prompt in zip(scored, masks, prompts(case), strict=True):
        assert isinstance(score, float) and 0.0 <= score <= 1.0
        assert mask.any() and np.array_equal(mask, plain)
        assert score == pytest.approx(heads_score(segmenter, case, prompt), rel=1e-4, abs=1e-6)


def test_the_iou_head_moves_the_score_never_the_mask(segmenter, case) -> None:
    [(mask, score)] = segmenter.segment_scored(case.hu, SPACING, prompts(case)[:1])
    [(low_mask, low)] = unsure(segmenter).segment_scored(case.hu, SPACING, prompts(case)[:1])
    assert np.array_equal(mask, low_mask)
    assert low < 1e-6 < score


def test_the_classical_model_gives_no_score(case) -> None:
    classical = ClassicalSegmenter()
    assert not isinstance(classical, ScoringSegmenter)
    [(mask, score)] = segment_with_scores(classical, case.hu, SPACING, prompts(case)[:1])
    assert score is None
    assert np.array_equal(mask, classical.segment(case.hu, SPACING, prompts(case)[:1])[0])


def _flags(segmenter, synth_dir: Path, out: Path) -> list[dict[str, str]]:
    """Each segmented annotation's flags, {code: reason}, from one GSPS of a synthetic study."""
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    parsed, failures = read_gsps_files([synth_dir / study["gsps"][0]["file"]])
    assert not failures
    run = segment_series(load_series(synth_dir / study["ct_dir"]), parsed, Choice(segmenter),
                         out)
    ok = [r for r in run.results if r.status is SegStatus.OK]
    assert ok
    return [dict(r.segmentation.quality_flags) for r in ok]


def test_a_low_model_score_flags_the_mask_where_it_is_made(segmenter, synth_dir,
                                                            tmp_path) -> None:
    for flags in _flags(unsure(segmenter), synth_dir, tmp_path / "sam2ct"):
        assert "model-score" in flags
        assert flags["model-score"].startswith("the model's own score of the mask is 0.00 ")
    assert all("model-score" not in flags
               for flags in _flags(ClassicalSegmenter(), synth_dir, tmp_path / "classical"))
