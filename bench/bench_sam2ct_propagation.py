"""Per-slice propagation latency: our SAM2CT predictor vs sam2's own SAM2VideoPredictor.

Same SAM2.1 Hiera-T config, same random weights, same volume (written as JPEG frames for sam2),
same prompt slice, both directions, in one run. Prints seconds per slice and the ratio
ours / sam2 (goal <= 1.0). Run: .venv/bin/python bench/bench_sam2ct_propagation.py --size 256
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
from sam2ct.model.propagate import propagate


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


def time_ours(model, volume, coords, labels, index, config, device) -> tuple[float, int]:
    """Seconds and slices visited for one bidirectional SAM2CT propagation."""
    start = time.perf_counter()
    with torch.inference_mode():
        result = propagate(model, volume, coords, labels, index, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, len(result.visited)


def time_sam2(predictor, frames: Path, coords, index, device) -> tuple[float, int]:
    """Seconds and frames visited for sam2's predictor: prompt, forward, then reverse."""
    state = predictor.init_state(str(frames))  # frame loading is not timed
    start = time.perf_counter()
    visited = 0
    with torch.inference_mode():
        predictor.add_new_points_or_box(state, index, 1, points=coords,
                                        labels=np.ones(len(coords), np.int32),
                                        normalize_coords=False)
        for reverse in (False, True):
            for _ in predictor.propagate_in_video(state, start_frame_idx=index, reverse=reverse):
                visited += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, visited - 1  # the prompt frame is yielded twice


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
    model_coords = native * (args.size / args.side)
    with tempfile.TemporaryDirectory() as tmp:
        write_frames(volume, Path(tmp))
        time_sam2(predictor, Path(tmp), native, index, device)  # warm-up
        time_ours(ours, volume, model_coords, np.array([4, 4]), index, config, device)
        rows = []
        for _ in range(args.repeats):
            t_ours, n_ours = time_ours(ours, volume, model_coords, np.array([4, 4]), index,
                                       config, device)
            t_sam2, n_sam2 = time_sam2(predictor, Path(tmp), native, index, device)
            rows.append((t_ours / n_ours, t_sam2 / n_sam2, n_ours, n_sam2))
    ours_s = min(r[0] for r in rows)
    sam2_s = min(r[1] for r in rows)
    print(f"device {device}, threads {torch.get_num_threads()}, input {args.size}px, "
          f"{args.slices} slices of {args.side}px")
    print(f"slices visited: ours {rows[-1][2]}, sam2 {rows[-1][3]}")
    print(f"SAM2CT propagation   {ours_s * 1000:8.1f} ms/slice  ({1 / ours_s:6.1f} slices/s)")
    print(f"SAM2VideoPredictor   {sam2_s * 1000:8.1f} ms/slice  ({1 / sam2_s:6.1f} slices/s)")
    print(f"ratio ours/sam2      {ours_s / sam2_s:8.2f}  (goal <= 1.0)")


if __name__ == "__main__":
    main()
