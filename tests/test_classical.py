"""The classical segmenter on phantoms with known truth, on LUNG1 and on synthetic studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam2ct.classical import ClassicalSegmenter
from sam2ct.metrics import dice
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.segmenter import Segmenter
from sam2ct.simulate import simulate_prompt

SPACING = (2.5, 0.8, 0.8)


def _phantom(lesion_hu: float, background_hu: float, noise: float, neighbour_hu: float | None,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal lesion (about 26 x 22 x 15 mm) in a background, a neighbour block touching
    it (columns < 35, the lesion starts at 34) when ``neighbour_hu`` is given; Gaussian noise."""
    rng = np.random.default_rng(seed)
    z, r, c = np.mgrid[:24, :96, :96].astype(float)
    truth = ((c - 50) / 16) ** 2 + ((r - 46) / 14) ** 2 + ((z - 11) / 3.2) ** 2 <= 1.0
    hu = np.full(truth.shape, background_hu, dtype=np.float32)
    if neighbour_hu is not None:
        hu[:, :, :35] = neighbour_hu
    hu[truth] = lesion_hu
    hu += rng.normal(0.0, noise, hu.shape).astype(np.float32)
    return hu, truth


@pytest.fixture(scope="module")
def lung_phantom():
    return _phantom(lesion_hu=40.0, background_hu=-800.0, noise=20.0, neighbour_hu=40.0)


def test_implements_the_segmenter_protocol():
    seg = ClassicalSegmenter()
    assert isinstance(seg, Segmenter)
    assert seg.name == "classical" and seg.version and seg.checkpoint_sha256 is None


@pytest.mark.parametrize("kind", [k.value for k in PromptKind])
def test_every_prompt_kind_on_a_lung_lesion_beside_the_mediastinum(kind, lung_phantom):
    hu, truth = lung_phantom
    prompt = simulate_prompt(truth, kind, SPACING)
    [mask] = ClassicalSegmenter().segment(hu, SPACING, [prompt])
    assert mask.shape == truth.shape and mask.dtype == bool
    assert mask[:, :, :34].sum() <= 0.01 * truth.sum(), "leaked into the same-density neighbour"
    assert dice(mask, truth) >= 0.85, kind


def _wall_phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A juxtapleural lung lesion (20 mm across) on the inside of a ring of chest wall of its own
    density, the lung filling the ring: the wall is a same-density neighbour an arrow can run into."""
    rng = np.random.default_rng(seed)
    z, r, c = np.mgrid[:24, :128, :128].astype(float)
    radius = np.hypot(r - 64, c - 64)
    hu = np.full(r.shape, -900.0, dtype=np.float32)
    hu[radius <= 60] = 40.0
    hu[radius <= 44] = -820.0
    truth = (((r - 64) / 10) ** 2 + ((c - 28) / 10) ** 2 + ((z - 11) / 3.5) ** 2 <= 1.0) \
        & (radius <= 44)
    hu[truth] = 40.0
    hu += rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
    return hu, truth


def _eight_arrows(hu: np.ndarray, truth: np.ndarray) -> tuple[list[float], list[float]]:
    """Volume ratio and Dice of arrows simulated with seeds 0-7."""
    ratios, scores = [], []
    for seed in range(8):
        prompt = simulate_prompt(truth, "arrow", SPACING, np.random.default_rng(seed))
        [mask] = ClassicalSegmenter().segment(hu, SPACING, [prompt])
        ratios.append(mask.sum() / truth.sum())
        scores.append(dice(mask, truth))
    return ratios, scores


def test_arrows_at_a_lesion_on_the_chest_wall_do_not_leak_into_it():
    """Filling every hole of the tip's region once made the whole ringed lung 'lesion' (volume
    up to 184x the truth); measured now: volume 0.37-1.05x, Dice mean 0.91 over these 8 arrows."""
    hu, truth = _wall_phantom()
    ratios, scores = _eight_arrows(hu, truth)
    assert max(ratios) <= 1.5, ratios
    assert np.mean(scores) >= 0.85, scores


def _hilar_phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hilar lung tumour (56 x 43 mm in-plane) against the mediastinum (5 HU, the tumour 40),
    an air-filled bronchus (5 mm) running from the mediastinum into it, like LUNG1-001's GTV."""
    rng = np.random.default_rng(seed)
    z, r, c = np.mgrid[:24, :128, :128].astype(float)
    hu = np.full(r.shape, -820.0, dtype=np.float32)
    hu[:, :, :40] = 5.0
    truth = ((c - 72) / 35) ** 2 + ((r - 64) / 27) ** 2 + ((z - 11) / 5) ** 2 <= 1.0
    hu[truth] = 40.0
    hu[(np.abs(r - 64) <= 3) & (c >= 30) & (c <= 80)] = -900.0
    hu += rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
    return hu, truth & (c >= 40)


def test_arrows_at_a_hilar_tumour_find_its_whole_extent():
    """Arrows from the mediastinum's side: the tip's region leaks into the mediastinum and the
    fan of rays stops at the bronchus, so 1.1.0 capped the size and gave Dice 0.09-0.11 for two
    of these 8 arrows (mean 0.68); 1.2.0's scale selection: 0.87-0.91, mean 0.89."""
    hu, truth = _hilar_phantom()
    ratios, scores = _eight_arrows(hu, truth)
    assert min(scores) >= 0.8, scores
    assert np.mean(scores) >= 0.85, scores
    assert max(ratios) <= 1.3, ratios


def test_low_contrast_liver_lesion():
    hu, truth = _phantom(lesion_hu=30.0, background_hu=60.0, noise=10.0, neighbour_hu=None)
    [mask] = ClassicalSegmenter().segment(hu, SPACING, [simulate_prompt(truth, "line", SPACING)])
    assert dice(mask, truth) >= 0.8


def test_several_prompts_and_determinism(lung_phantom):
    hu, truth = lung_phantom
    prompts = [simulate_prompt(truth, "line", SPACING),
               simulate_prompt(truth, "arrow", SPACING, np.random.default_rng(3))]
    first = ClassicalSegmenter().segment(hu, SPACING, prompts)
    second = ClassicalSegmenter().segment(hu.copy(), SPACING, prompts)
    assert len(first) == 2
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_invalid_inputs():
    seg = ClassicalSegmenter()
    prompt = Prompt(PromptKind.POINT, 30, np.array([[5.0, 5.0]]))
    with pytest.raises(ValueError, match="slice 30"):
        seg.segment(np.zeros((4, 16, 16)), SPACING, [prompt])
    with pytest.raises(ValueError, match="shape"):
        seg.segment(np.zeros((16, 16)), SPACING, [prompt])
    with pytest.raises(ValueError, match="spacing"):
        seg.segment(np.zeros((4, 16, 16)), (0.0, 1.0, 1.0), [prompt])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["LUNG1-001", "LUNG1-002"])
def test_lung1_gtv_from_a_line(case, request):
    """Issue 2's target: Dice >= 0.75 on GTV-1 from the RECIST line (measured 0.845 / 0.839)."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series

    root = request.getfixturevalue("lung1_001" if case.endswith("1") else "lung1_002")
    volume = load_series(root / "ct")
    truth = read_truth(root / "rtstruct.dcm", volume, "GTV-1")
    prompt = simulate_prompt(truth, "line", volume.spacing)
    [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, [prompt])
    assert dice(mask, truth) >= 0.75


@pytest.mark.slow
def test_synthetic_lesions_from_lines(synth_dir: Path):
    """Lesions of `sam2ct synth` studies (liver, lung, kidney) from simulated RECIST lines."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series

    manifest = json.loads((synth_dir / "manifest.json").read_text())
    scores = []
    for study in manifest["studies"]:
        volume = load_series(synth_dir / study["ct_dir"])
        for lesion in study["lesions"]:
            truth = read_truth(synth_dir / lesion["truth"], volume)
            prompt = simulate_prompt(truth, "line", volume.spacing)
            [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, [prompt])
            scores.append(dice(mask, truth))
    assert len(scores) >= 4
    assert np.mean(scores) >= 0.75, scores


@pytest.mark.slow
def test_lung1_arrows_stay_within_a_plausible_volume(lung1_001: Path, lung1_001_volume):
    """Arrows at LUNG1-001 GTV-1 from 8 directions: never more than 2x the GTV's volume (measured
    at most 1.16x with 1.2.0; Dice mean 0.53, but 0.01 for the three arrows whose tail lies in the
    mediastinum: the narrow band finds a 15 mm region edged all round and keeps it)."""
    from dicom_io.truth import read_truth

    volume = lung1_001_volume
    truth = read_truth(lung1_001 / "rtstruct.dcm", volume, "GTV-1")
    ratios = []
    for seed in range(8):
        prompt = simulate_prompt(truth, "arrow", volume.spacing, np.random.default_rng(seed))
        [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, [prompt])
        ratios.append(mask.sum() / truth.sum())
    assert 0 < max(ratios) <= 2.0, ratios


@pytest.mark.slow
def test_synthetic_lesions_from_arrows_do_not_leak(synth_dir: Path):
    """Arrows at every lesion of the `sam2ct synth` studies: volume bounded, Dice kept."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series

    manifest = json.loads((synth_dir / "manifest.json").read_text())
    ratios, scores = [], []
    for study in manifest["studies"]:
        volume = load_series(synth_dir / study["ct_dir"])
        for number, lesion in enumerate(study["lesions"]):
            truth = read_truth(synth_dir / lesion["truth"], volume)
            prompt = simulate_prompt(truth, "arrow", volume.spacing,
                                     np.random.default_rng(number))
            [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, [prompt])
            ratios.append(mask.sum() / truth.sum())
            scores.append(dice(mask, truth))
    assert len(scores) >= 4
    assert max(ratios) <= 2.0, ratios  # measured at most 1.46x
    assert np.mean(scores) >= 0.78, scores  # measured 0.84


@pytest.mark.slow
def test_arrow_with_no_edge_at_its_tip_is_bounded(tmp_path: Path):
    """The demo study's compound arrow at a kidney lesion (9 mL) whose tail lies in tissue of the
    lesion's density: the tip's region runs over the abdomen. It gave 256 mL (28x); now about 3x."""
    from dicom_io.gsps import locate
    from dicom_io.synth import make_studies
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series
    from flows.segment_series import parse_gsps, prompt_of

    make_studies(tmp_path, studies=1, seed=1, size=512)
    study = tmp_path / "study-001"
    volume = load_series(study / "ct")
    parsed = parse_gsps(study / "gsps" / "compound-arrow-L3.dcm")
    prompts = [p for p, _ in (prompt_of(locate(a, volume)) for a in parsed.annotations) if p]
    truth = read_truth(study / "truth" / "L3.nii.gz", volume)
    [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, prompts)
    assert prompts[0].kind is PromptKind.ARROW
    assert mask.sum() <= 5 * truth.sum(), mask.sum() / truth.sum()  # measured 3.0x
    assert dice(mask, truth) >= 0.3  # measured 0.49


@pytest.mark.slow
def test_lung1_002_arrows(lung1_002: Path):
    """Arrows at LUNG1-002 GTV-1 from 8 directions (the tuning case of 1.2.0): Dice mean 0.782,
    min 0.581 measured (1.1.0: mean 0.751, min 0.339 at seed 6, which 1.2.0 sizes by scales)."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series

    volume = load_series(lung1_002 / "ct")
    truth = read_truth(lung1_002 / "rtstruct.dcm", volume, "GTV-1")
    scores = []
    for seed in range(8):
        prompt = simulate_prompt(truth, "arrow", volume.spacing, np.random.default_rng(seed))
        [mask] = ClassicalSegmenter().segment(volume.array, volume.spacing, [prompt])
        scores.append(dice(mask, truth))
    assert min(scores) >= 0.5, scores
    assert np.mean(scores) >= 0.77, scores
