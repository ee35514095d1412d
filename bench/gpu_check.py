"""GPU check for SAM2CT: training steps on synthetic data, then inference on a LUNG1 series.

Prints training steps/s, propagation slices/s (goal on an H100: >= 100), peak GPU memory and a
per-stage breakdown of propagation (encode / memory attention / decode / memory encode /
resample; host and kernel time, from the profiler).
Needs torch, sam2 (+ hydra, omegaconf, iopath), numpy, scipy, scikit-image, pydicom; installs
nothing. Run through bench/gpu_check.sh LUNG1_DIR [options].
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sam2ct.model import SAM2CTConfig, SAM2CTSegmenter, build_sam2ct, load_sam2ct
from sam2ct.model.propagate import propagate
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.training import LesionCase, TrainConfig, train


def synthetic_cases(side: int, slices: int) -> list[LesionCase]:
    """Two phantom CT volumes with one ellipsoidal lesion each (HU)."""
    cases = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        z, y, x = np.mgrid[:slices, :side, :side]
        centre = rng.uniform(0.35, 0.65, 3) * (slices, side, side)
        radii = rng.uniform(0.25, 0.4, 3) * (slices, side / 3, side / 3)
        lesion = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radii,
                                                            strict=True)) < 1
        image = np.where(lesion, 70.0, -80.0) + rng.normal(0, 25, lesion.shape)
        cases.append(LesionCase(f"phantom{seed}", image.astype(np.float32),
                                lesion.astype(np.uint8), (3.0, 0.8, 0.8)))
    return cases


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (not CUDA)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run_training(model, config, args, device) -> None:
    cases = synthetic_cases(args.train_side, args.train_slices)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as out:
        result = train(model, cases, Path(out), config,
                       TrainConfig(steps=args.steps, lr=1e-5, log_every=max(1, args.steps // 10),
                                   save_every=args.steps + 1), resume=False)
    print(f"TRAIN  {result.steps_done} steps, clips of 8 slices at {config.image_size}px: "
          f"{result.seconds:.1f} s ({result.steps_done / result.seconds:.2f} steps/s, "
          f"checkpoint writes included), loss {result.first_loss:.3f} -> "
          f"{result.last_loss:.3f}, peak GPU memory {peak_gib(device)}")


def lung1_prompt(folder: Path, roi: str):
    """The LUNG1 volume (HU) and a RECIST line prompt on the GTV (or the centre if unreadable)."""
    from dicom_io.volume import load_series

    volume = load_series(folder)
    truth = None
    try:
        from dicom_io.truth import read_truth
        from sam2ct.simulate import simulate_prompt

        rtstruct = next(p for p in sorted(folder.rglob("*.dcm")) if "rt" in p.name.lower())
        truth = read_truth(rtstruct, volume, roi)
        prompt = simulate_prompt(truth, PromptKind.LINE, volume.spacing)
    except (ImportError, StopIteration, ValueError) as exc:
        print(f"note: no GTV prompt ({type(exc).__name__}: {exc}); using a central line")
        z, rows, cols = volume.array.shape
        prompt = Prompt(PromptKind.LINE, z // 2, np.array([[cols * 0.4, rows / 2],
                                                           [cols * 0.6, rows / 2]]))
    return volume, truth, prompt


@contextlib.contextmanager
def forced_present(model):
    """The decoder's verdict pinned to 'object present', so every slice is visited."""
    def hook(_m, _a, out):
        masks, ious, tokens, scores = out
        return torch.full_like(masks, 10.0), ious, tokens, torch.full_like(scores, 10.0)

    handle = model.sam_mask_decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def forced_sweep(model, volume: np.ndarray, prompt: Prompt, config, device) -> None:
    """Throughput over every slice: the decoder's verdict pinned to 'object present'."""
    from sam2ct.model.preprocess import prompt_points

    coords, labels = prompt_points(prompt, volume.shape[1:], config)
    with forced_present(model):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode(), _autocast(device):
            result = propagate(model, volume, coords, labels, prompt.slice_index, config)
        sync(device)
        seconds = time.perf_counter() - start
    print(f"SWEEP  all {len(result.visited)} slices (decoder forced non-empty): {seconds:.2f} s, "
          f"{len(result.visited) / seconds:.1f} slices/s, peak GPU memory {peak_gib(device)}")


def stage_breakdown(model, volume: np.ndarray, prompt: Prompt, config, device,
                    slices: int = 24) -> None:
    """Per-slice time of each propagation stage (the ``sam2ct.<stage>`` profiler ranges).

    A forced sweep of ``slices`` slices around the prompt (the profiler's event processing is
    slow) under torch.profiler. ``host`` is CPU time inside the range (on CUDA: issuing the
    kernels, where a launch-bound run spends its time); ``kernels`` is the GPU time of the
    kernels issued from it (0 on the CPU); ``other`` is wall time outside every range.
    Profiler overhead included, so compare stages with each other, not with SWEEP.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from sam2ct.model.preprocess import prompt_points
    from sam2ct.model.propagate import STAGES

    coords, labels = prompt_points(prompt, volume.shape[1:], config)
    lo = max(0, prompt.slice_index - slices // 2)
    volume, index = volume[lo:lo + slices], prompt.slice_index - lo
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with forced_present(model), profile(activities=activities) as prof:
        start = time.perf_counter()
        with torch.inference_mode(), _autocast(device):
            result = propagate(model, volume, coords, labels, index, config)
        sync(device)
        seconds = time.perf_counter() - start
    host, kernels = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    for event in prof.events():
        stage = event.name.removeprefix("sam2ct.")
        if stage in host and event.name != stage and event.device_type == DeviceType.CPU:
            host[stage] += event.cpu_time_total / 1e3  # ms
            kernels[stage] += event.device_time_total / 1e3
    n = len(result.visited)
    print(f"STAGES ms per slice over {n} slices, profiled ({seconds / n * 1e3:.2f} ms/slice wall):")
    for stage in STAGES:
        print(f"  {stage:<17} host {host[stage] / n:8.2f}  kernels {kernels[stage] / n:8.2f}")
    print(f"  {'other':<17} host {(seconds * 1e3 - sum(host.values())) / n:8.2f}")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else contextlib.nullcontext()


def run_inference(model, config, args, device) -> None:
    volume, truth, prompt = lung1_prompt(Path(args.lung1), args.roi)
    print(f"LUNG1  {volume.array.shape} voxels, prompt on slice {prompt.slice_index}")
    segmenter = SAM2CTSegmenter(model.eval(), config)
    segmenter.segment(volume.array, volume.spacing, [prompt])  # warm-up
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    [mask] = segmenter.segment(volume.array, volume.spacing, [prompt])
    sync(device)
    seconds = time.perf_counter() - start
    visited = len(segmenter.last_propagations[0].visited)
    dice = "n/a"
    if truth is not None:
        dice = f"{2 * (mask & truth).sum() / max(1, mask.sum() + truth.sum()):.3f}"
    print(f"INFER  {visited} slices visited in {seconds:.2f} s ({visited / seconds:.1f} slices/s), "
          f"{int(mask.any(axis=(1, 2)).sum())} slices with lesion, Dice vs GTV {dice} "
          f"(random/untrained weights unless --checkpoint), peak GPU memory {peak_gib(device)}")
    forced_sweep(model, volume.array, prompt, config, device)
    stage_breakdown(model, volume.array, prompt, config, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lung1", required=True, help="LUNG1 case folder (CT + RTSTRUCT)")
    parser.add_argument("--roi", default="GTV-1")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--train-side", type=int, default=512)
    parser.add_argument("--train-slices", type=int, default=24)
    parser.add_argument("--checkpoint", default=None, help="SAM2CT weights (default: random)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = SAM2CTConfig(image_size=args.image_size)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"GPU    {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    if args.checkpoint:
        model, _ = load_sam2ct(Path(args.checkpoint), device, config)
    else:
        model = build_sam2ct(config, seed=0).to(device)
    began = time.perf_counter()
    run_training(model, config, args, device)
    run_inference(model, config, args, device)
    print(f"TOTAL  {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
