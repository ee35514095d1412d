"""GPU check for SAM2CT: training steps on synthetic data, then inference on a LUNG1 series.

Prints training steps/s, propagation slices/s (goal on an H100: >= 100), peak GPU memory and a
per-stage breakdown of propagation (encode / memory attention / decode / memory encode /
resample; host and kernel time, from the profiler). ``--variants`` times the forced sweep with
each propagation option (stop check in step or one step late, CUDA graphs, bf16 weights) in
one run, and how far the unforced masks of each option agree with the plain one.
``--learn FILE.npz`` (from ``bench/bench_sam2ct_learning.py --pack``) trains a randomly
initialised model for ``--learn-steps`` and prints held-out Dice before and after, with the
classical segmenter on the same lesions.
Needs torch, sam2 (+ hydra, omegaconf, iopath), numpy, scipy, scikit-image, pydicom; installs
nothing. Run through bench/gpu_check.sh LUNG1_DIR [options].
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
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


def forced_sweep(model, volume: np.ndarray, prompt: Prompt, config, device,
                 lookahead: bool | None = None, label: str = "SWEEP", repeats: int = 1) -> float:
    """Throughput over every slice: the decoder's verdict pinned to 'object present'.

    Best of ``repeats`` timed sweeps after one untimed (CUDA graphs are captured there).
    """
    from sam2ct.model.preprocess import prompt_points

    coords, labels = prompt_points(prompt, volume.shape[1:], config)
    times = []
    with forced_present(model), torch.inference_mode(), _autocast(device):
        propagate(model, volume, coords, labels, prompt.slice_index, config, lookahead)
        reset_peak(device)
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            result = propagate(model, volume, coords, labels, prompt.slice_index, config,
                               lookahead)
            sync(device)
            times.append(time.perf_counter() - start)
    rate = len(result.visited) / min(times)
    print(f"{label}  all {len(result.visited)} slices (decoder forced non-empty): "
          f"{min(times):.2f} s best of {repeats}, {rate:.1f} slices/s, "
          f"peak GPU memory {peak_gib(device)}")
    return rate


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


def infer(segmenter, volume, truth, prompt: Prompt, device) -> None:
    """Time ``segmenter.segment`` on the LUNG1 series after one warm-up call."""
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
          f"(random/untrained weights unless --checkpoint), peak GPU memory {peak_gib(device)}"
          f"{', CUDA graphs' if segmenter.config.cuda_graphs else ', no CUDA graphs'}")


def run_inference(model, config, args, device) -> None:
    volume, truth, prompt = lung1_prompt(Path(args.lung1), args.roi)
    print(f"LUNG1  {volume.array.shape} voxels, prompt on slice {prompt.slice_index}")
    configs = [config] + ([dataclasses.replace(config, cuda_graphs=False)] if args.variants
                          else [])
    for cfg in configs:
        infer(SAM2CTSegmenter(model.eval(), cfg), volume, truth, prompt, device)
    forced_sweep(model, volume.array, prompt, config, device, repeats=2)
    if args.variants:
        compare_variants(model, volume.array, prompt, config, device)
    stage_breakdown(model, volume.array, prompt, config, device)


def bf16_weights(model):
    """A copy whose linear and convolution weights are stored in bfloat16 (autocast then
    casts no weights); norms and embeddings stay float32."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.to(torch.bfloat16)
    return model


def unforced_masks(model, volume: np.ndarray, prompt: Prompt, config, device,
                   lookahead: bool | None) -> dict[int, np.ndarray]:
    from sam2ct.model.preprocess import prompt_points

    coords, labels = prompt_points(prompt, volume.shape[1:], config)
    with torch.inference_mode(), _autocast(device):
        propagate(model, volume, coords, labels, prompt.slice_index, config, lookahead)
        return propagate(model, volume, coords, labels, prompt.slice_index, config,
                         lookahead).masks


def agreement(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> str:
    """Dice of two propagations' masks over all slices, and the slices only one of them has."""
    both = sorted(set(a) & set(b))
    inter = sum(int((a[i] & b[i]).sum()) for i in both)
    total = sum(int(m.sum()) for m in a.values()) + sum(int(m.sum()) for m in b.values())
    return f"Dice {2 * inter / max(1, total):.4f}, slices {len(a)} vs {len(b)}"


def compare_variants(model, volume: np.ndarray, prompt: Prompt, config, device) -> None:
    """Forced-sweep slices/s of each propagation option, and unforced mask agreement."""
    eager = dataclasses.replace(config, cuda_graphs=False)
    graphs = dataclasses.replace(config, cuda_graphs=True)
    variants = [("stop check in step", model, eager, False),
                ("stop check one step late", model, eager, True),
                ("late check + CUDA graphs", model, graphs, True),
                ("late check + graphs + bf16 weights", None, graphs, True)]
    plain = unforced_masks(model, volume, prompt, eager, device, False)
    for name, net, cfg, lookahead in variants:
        try:
            net = net if net is not None else bf16_weights(model)
            forced_sweep(net, volume, prompt, cfg, device, lookahead, label=f"VARIANT {name}:", repeats=3)
            masks = unforced_masks(net, volume, prompt, cfg, device, lookahead)
            print(f"         unforced masks vs stop check in step: "
                  f"{agreement(plain, masks)}")
        except Exception as exc:  # a variant that fails is reported, the check goes on
            print(f"VARIANT  {name}: FAILED {type(exc).__name__}: {exc}")


def unpack_cases(path: Path) -> dict[str, list[LesionCase]]:
    """The sets written by ``bench_sam2ct_learning.py --pack``: {'train': [...], 'heldout': [...]}."""
    data = np.load(path)
    sets: dict[str, list[LesionCase]] = {}
    for key in sorted(data.files):
        split, name, part = key.split("|")
        if part == "image":
            spacing = tuple(float(v) for v in data[f"{split}|{name}|spacing"])
            sets.setdefault(split, []).append(LesionCase(
                name, data[key].astype(np.float32), data[f"{split}|{name}|label"], spacing))
    return sets


def held_out_dice(segmenter, cases: list[LesionCase]) -> str:
    from sam2ct.evaluation import evaluate_dataset, summarise_kind

    run = evaluate_dataset(cases, segmenter, ["line", "arrow"])
    parts = []
    for kind in ("line", "arrow"):
        row = summarise_kind(kind, run.results)
        parts.append(f"{kind} {row.mean_dice:.3f} (median {row.median_dice:.3f}, n {row.n})")
    return ", ".join(parts)


def run_learning(args, device) -> None:
    """Random init -> ``--learn-steps`` of training -> held-out Dice, with classical as a peer."""
    from sam2ct.registry import choose_segmenter

    sets = unpack_cases(Path(args.learn))
    size = sets["train"][0].image.shape[-1]
    config = SAM2CTConfig(image_size=size)
    model = build_sam2ct(config, seed=0).to(device)
    print(f"LEARN  {len(sets['train'])} train / {len(sets['heldout'])} held-out synthetic "
          f"studies at {size} px; random init (no pre-trained weights exist here)")
    print(f"LEARN  held-out Dice, classical: {held_out_dice(choose_segmenter('classical').segmenter, sets['heldout'])}")
    print(f"LEARN  held-out Dice, random init: "
          f"{held_out_dice(SAM2CTSegmenter(model, config), sets['heldout'])}")
    steps, seconds, losses = 0, 0.0, []
    with tempfile.TemporaryDirectory() as out:
        while steps < args.learn_steps and seconds < args.learn_seconds:
            chunk = min(args.learn_steps, steps + 250)  # resumes from out/last.pt each time
            result = train(model, sets["train"], Path(out), config,
                           TrainConfig(steps=chunk, lr=args.learn_lr, log_every=50,
                                       save_every=chunk + 1), resume=True)
            steps, seconds = chunk, seconds + result.seconds
        for line in (Path(out) / "train_log.jsonl").read_text().splitlines():
            row = json.loads(line)
            losses.append(f"{row['step']}: {row['total']:.2f}")
    print(f"LEARN  {steps} steps in {seconds:.0f} s ({steps / seconds:.2f} steps/s, checkpoint "
          f"writes included), lr {args.learn_lr:g}; one clip's loss every 50 steps: "
          + ", ".join(losses))
    print(f"LEARN  held-out Dice, trained: "
          f"{held_out_dice(SAM2CTSegmenter(model.eval(), config), sets['heldout'])}")


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
    parser.add_argument("--variants", action="store_true", help="time each propagation option")
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the training steps and LUNG1 inference (e.g. with --learn)")
    parser.add_argument("--learn", default=None, help=".npz from bench_sam2ct_learning --pack")
    parser.add_argument("--learn-steps", type=int, default=20000, help="at most")
    parser.add_argument("--learn-seconds", type=float, default=240,
                        help="stop training after the 250-step chunk that passes this")
    parser.add_argument("--learn-lr", type=float, default=1e-4)
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
    if not args.skip_check:
        run_training(model, config, args, device)
        run_inference(model, config, args, device)
    if args.learn:
        run_learning(args, device)
    print(f"TOTAL  {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
