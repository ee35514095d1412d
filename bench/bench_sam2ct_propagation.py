"""Per-slice propagation latency: our SAM2CT predictor vs sam2's own SAM2VideoPredictor.

Same SAM2.1 Hiera-T config, same random weights, same volume (written as JPEG frames for sam2),
same prompt slice, both directions, in one run. Prints seconds per slice and the ratio
ours / sam2 (goal <= 1.0), as wall time and as process CPU time (the machine may be shared: with
one torch thread, CPU time is what the work costs, wall time adds waiting for a core), each the
best of ``--repeats`` interleaved runs; then both predictors' CPU time per slice in each SAM2
module and outside them (one more run each, with module hooks).

What is timed, both sides encoding every visited slice once:
- ours: HU windowing and resizing of the volume, image encoding, prompt decode, both directions
  (memory attention, decoder, MCM memory encoding), masks resampled to the native grid and moved
  to numpy;
- sam2: ``add_new_points_or_box`` (encodes the prompt frame) and ``propagate_in_video`` forward
  then reverse (encodes every frame, its cache holds one frame; masks resized to the video size).
  Not timed: ``init_state`` (JPEG decoding, resizing and normalising every frame, and one
  warm-up encode of frame 0), so sam2's pre-processing is free and ours is not.
Run: .venv/bin/python bench/bench_sam2ct_propagation.py --size 256 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2ct.model import SAM2CTConfig, build_sam2ct
from sam2ct.model.build import sam2_overrides
from sam2ct.model.checkpoint import NEW_POINT_EMBEDDINGS
from sam2ct.model.preprocess import prompt_points
from sam2ct.model.propagate import propagate
from sam2ct.prompts import Prompt, PromptKind


def phantom(slices: int, side: int, seed: int = 0) -> np.ndarray:
    """A bright ellipsoid in noisy soft tissue (HU), centred, spanning most slices."""
    z, y, x = np.mgrid[:slices, :side, :side]
    c = side / 2
    inside = ((z - slices / 2) / (slices / 2.2)) ** 2 + ((y - c) / (side / 5)) ** 2 \
        + ((x - c) / (side / 4)) ** 2 < 1
    noise = np.random.default_rng(seed).normal(0, 20, inside.shape)
    return (np.where(inside, 80.0, -100.0) + noise).astype(np.float32)


def write_frames(volume: np.ndarray, folder: Path) -> None:
    """Slices as 8-bit JPEG frames <index>.jpg (HU window [-500, 500]), as sam2 reads videos."""
    scaled = (np.clip(volume, -500, 500) + 500) / 1000 * 255
    for i, plane in enumerate(scaled.astype(np.uint8)):
        Image.fromarray(plane).convert("RGB").save(folder / f"{i:05d}.jpg", quality=95)


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()
        return self

    def __exit__(self, *_exc) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


class ModuleClock:
    """Process CPU seconds spent inside each of a SAM2 model's main modules (forward hooks).

    CPU only: on a GPU the hooks would time kernel launches, not kernels.
    """

    MODULES = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = dict.fromkeys(self.MODULES, 0.0)
        self.handles = []
        for name in self.MODULES:
            module = getattr(model, name)
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _start(self, name: str):
        def hook(_module, _args) -> None:
            self.seconds[name] -= time.process_time()
        return hook

    def _stop(self, name: str):
        def hook(_module, _args, _out) -> None:
            self.seconds[name] += time.process_time()
        return hook

    def reset(self) -> None:
        """Forget what was counted so far (sam2's untimed ``init_state`` encodes a frame)."""
        self.seconds = dict.fromkeys(self.MODULES, 0.0)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_ours(model, volume, coords, labels, index, config, device) -> tuple[Clock, int]:
    """Clock and slices visited for one bidirectional SAM2CT propagation."""
    with Clock() as clock, torch.inference_mode():
        result = propagate(model, volume, coords, labels, index, config)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return clock, len(result.visited)


def run_sam2(predictor, frames: Path, coords, index, device,
             modules: ModuleClock | None = None) -> tuple[Clock, int]:
    """Clock and frames visited for sam2's predictor: prompt, forward, then reverse."""
    state = predictor.init_state(str(frames))  # frame loading is not timed
    if modules is not None:
        modules.reset()
    visited = 0
    with Clock() as clock, torch.inference_mode():
        predictor.add_new_points_or_box(state, index, 1, points=coords,
                                        labels=np.ones(len(coords), np.int32),
                                        normalize_coords=False)
        for reverse in (False, True):
            for _ in predictor.propagate_in_video(state, start_frame_idx=index, reverse=reverse):
                visited += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return clock, visited - 1  # the prompt frame is yielded twice


def print_modules(name: str, model, run) -> None:
    """CPU ms per slice in each SAM2 module and outside them, for one more run."""
    modules = ModuleClock(model)
    try:
        clock, visited = run(modules)
    finally:
        modules.remove()
    parts = dict(modules.seconds, other=clock.cpu - sum(modules.seconds.values()))
    print(f"  {name:<20} " + "  ".join(f"{k} {v / visited * 1000:6.1f}" for k, v in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="model input size")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--side", type=int, default=256, help="native slice side in voxels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sam2.build_sam import build_sam2_video_predictor

    device = torch.device(args.device)
    config = SAM2CTConfig(image_size=args.size)
    ours = build_sam2ct(config, seed=0).to(device).eval()
    predictor = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None,
                                           device=str(device), apply_postprocessing=False,
                                           hydra_overrides_extra=sam2_overrides(config))
    shared = {k: v for k, v in ours.state_dict().items() if k not in NEW_POINT_EMBEDDINGS}
    predictor.load_state_dict(shared, strict=True)  # the same random weights in both
    volume = phantom(args.slices, args.side)
    index = args.slices // 2
    c = args.side / 2
    native = np.array([[c - args.side / 5, c], [c + args.side / 5, c]])
    line = Prompt(PromptKind.LINE, index, native)
    model_coords, labels = prompt_points(line, volume.shape[1:], config)  # in our model's view

    def ours_run(_modules=None):
        return run_ours(ours, volume, model_coords, labels, index, config, device)

    with tempfile.TemporaryDirectory() as tmp:
        write_frames(volume, Path(tmp))

        def sam2_run(modules=None):
            return run_sam2(predictor, Path(tmp), native, index, device, modules)

        sam2_run()  # warm-up
        ours_run()
        runs = []
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            (c_ours, n_ours), (c_sam2, n_sam2) = ours_run(), sam2_run()
            runs.append((c_ours, n_ours, c_sam2, n_sam2))
        print(f"device {device}, threads {torch.get_num_threads()}, input {args.size}px, "
              f"{args.slices} slices of {args.side}px, best of {args.repeats}")
        print(f"slices visited: ours {runs[-1][1]}, sam2 {runs[-1][3]}")
        for kind in ("wall", "cpu"):
            ours_s = min(getattr(r[0], kind) / r[1] for r in runs)
            sam2_s = min(getattr(r[2], kind) / r[3] for r in runs)
            print(f"{kind:>4}  SAM2CT propagation   {ours_s * 1000:8.1f} ms/slice  "
                  f"({1 / ours_s:6.1f} slices/s)")
            print(f"{kind:>4}  SAM2VideoPredictor   {sam2_s * 1000:8.1f} ms/slice  "
                  f"({1 / sam2_s:6.1f} slices/s)")
            print(f"{kind:>4}  ratio ours/sam2      {ours_s / sam2_s:8.2f}  (goal <= 1.0)")
        if device.type == "cpu":
            print("CPU ms per slice by module (one more run each):")
            print_modules("SAM2CT propagation", ours, ours_run)
            print_modules("SAM2VideoPredictor", predictor, sam2_run)


if __name__ == "__main__":
    main()
