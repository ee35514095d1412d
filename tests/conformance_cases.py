"""SAM2CT conformance cases: a CT crop, a prompt, and the masks the published recipe gives.

A case folder (layout of ``../shared/data/parity/README.md``) holds ``input_hu.npz`` (``hu``,
(slices, rows, cols) in DICOM orientation), ``prompt.json`` (``kind``, ``slice_index``,
``points_xy`` as (column, row), ``image_size``) and ``expected_mask.npz`` (``mask``). The
network is built at ``image_size`` with the deterministic weights of
``../shared/tools/parity_weights.py`` and run on the CPU in float32.

    python tests/conformance_cases.py      writes the bidirectional case of tests/data/conformance
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OWN_CASES = REPO / "tests" / "data" / "conformance"


@dataclass(frozen=True)
class Case:
    """A case's input and prompt (never its expected mask)."""

    name: str
    hu: np.ndarray
    kind: str
    slice_index: int
    points_xy: np.ndarray
    image_size: int


def load_case(folder: Path) -> Case:
    """The input and prompt of a case folder."""
    prompt = json.loads((folder / "prompt.json").read_text())
    with np.load(folder / "input_hu.npz") as data:
        hu = data["hu"].astype(np.float32)
    return Case(folder.name, hu, prompt["kind"], int(prompt["slice_index"]),
                np.asarray(prompt["points_xy"], dtype=float), int(prompt["image_size"]))


def expected_mask(folder: Path) -> np.ndarray:
    """What the published code (or recipe) produced for a case."""
    with np.load(folder / "expected_mask.npz") as data:
        return data["mask"].astype(bool)


def parity_weights(tools: Path) -> ModuleType:
    """``parity_weights.py`` of the shared tools folder, imported by path."""
    spec = importlib.util.spec_from_file_location("parity_weights", tools / "parity_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def segment_case(case: Case, weights: ModuleType) -> np.ndarray:
    """Our SAM2CTSegmenter, published conventions, deterministic weights, CPU float32."""
    from sam2ct.model import SAM2CTConfig, SAM2CTSegmenter, build_sam2ct
    from sam2ct.prompts import Prompt, PromptKind

    config = SAM2CTConfig(image_size=case.image_size)
    model = build_sam2ct(config)
    model.load_state_dict(weights.fill(model.state_dict()))
    prompt = Prompt(PromptKind(case.kind), case.slice_index, case.points_xy, case.name)
    [mask] = SAM2CTSegmenter(model, config).segment(case.hu, (1.0, 1.0, 1.0), [prompt])
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def write_bidirectional_case(shared_data: Path, out: Path) -> None:
    """LUNG1-002 around GTV-1's largest slice: 16 slices, 144 x 120 (not the model size, not
    square: resized inside the model), a bidirectional prompt simulated from GTV-1 (four points,
    all label 4), run at 128 px; the expected mask is what the recipe gives."""
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series
    from sam2ct.prompts import PromptKind
    from sam2ct.simulate import simulate_prompt

    root = shared_data / "lung1" / "LUNG1-002"
    volume = load_series(root / "ct")
    gtv = read_truth(root / "rtstruct.dcm", volume, "GTV-1")
    z = int(np.argmax(gtv.sum(axis=(1, 2))))
    crop = (slice(z - 8, z + 8), slice(206, 350), slice(119, 239))
    hu, lesion = volume.array[crop], gtv[crop]
    prompt = simulate_prompt(lesion, PromptKind.BIDIRECTIONAL, volume.spacing)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "input_hu.npz", hu=np.round(hu).astype(np.int16))  # whole HU
    (out / "prompt.json").write_text(json.dumps({
        "kind": "bidirectional", "slice_index": prompt.slice_index,
        "points_xy": prompt.points.tolist(), "image_size": 128}, indent=1) + "\n")
    case = load_case(out)
    mask = segment_case(case, parity_weights(shared_data.parent / "tools"))
    np.savez_compressed(out / "expected_mask.npz", mask=mask)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    write_bidirectional_case(REPO.parent / "shared" / "data",
                             OWN_CASES / "lung1-002-bidirectional-128")
