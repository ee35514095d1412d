"""Does `sam2ct train` learn? Held-out Dice of a randomly initialised SAM2CT before and after.

No SAM2CT or SAM2.1 weights can be downloaded here, so the only accuracy figure we can produce
is from our own training: the init is *random* weights saved in the published layout (no
ImageNet / SAM2 pre-training, which the real fine-tuning starts from). The bench

1. writes synthetic studies (``dicom_io.synth.make_studies``: CT series + NIfTI lesion truth) and
   turns each into an nnU-Net style NIfTI pair (``imagesTr``/``labelsTr``), train and held-out
   sets from different seeds (different bodies, lesions and scanners);
2. saves ``build_sam2ct(seed)`` at ``--size`` as ``init.pt`` and runs
   ``sam2ct train --data TRAIN --init init.pt --image-size SIZE --steps N --lr LR`` (the CLI,
   in-process; the spec's pre-processing is unchanged, only the model input size is small);
3. runs ``sam2ct evaluate --dataset HELDOUT`` with ``init.pt``, the trained ``sam2ct.pt`` and,
   as a real peer, the ``classical`` segmenter, with line and arrow prompts;
4. prints the held-out Dice table, steps/s and the loss curve (first / last 10-step means and
   the mean of each tenth of the run).

``--lr``: the CLI default 1e-5 suits fine-tuning a pre-trained model; from random weights a
larger rate is fair (default here 1e-4).
Run: .venv/bin/python bench/bench_sam2ct_learning.py --steps 200 --threads 1
``--pack FILE.npz`` only writes both sets as arrays, for ``bench/gpu_check.py --learn FILE.npz``
(the GPU machine has neither SimpleITK nor the CLI's other dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flows.cli import main as sam2ct

KINDS = "line,arrow"


def make_dataset(root: Path, studies: int, seed: int, size: int, slices: int) -> Path:
    """Synthetic studies under ``root/dicom`` as NIfTI pairs under ``root/nifti``; returns the latter."""
    from dicom_io.nifti import read_nifti, write_nifti
    from dicom_io.synth import make_studies
    from dicom_io.volume import load_series

    manifest = make_studies(root / "dicom", studies=studies, seed=seed, size=size, slices=slices)
    out = root / "nifti"
    for study in json.loads(manifest.read_text())["studies"]:
        volume = load_series(root / "dicom" / study["ct_dir"])
        name = f"s{seed}-{study['ct_dir'].split('/')[0]}"
        write_nifti(volume.array.astype(np.int16), volume.affine,
                    out / "imagesTr" / f"{name}_0000.nii.gz")
        label = np.zeros(volume.array.shape, np.uint8)
        for value, lesion in enumerate(study["lesions"], start=1):
            truth, _ = read_nifti(root / "dicom" / lesion["truth"])
            label[truth > 0] = value
        write_nifti(label, volume.affine, out / "labelsTr" / f"{name}.nii.gz")
    return out


def pack_cases(path: Path, sets: dict[str, Path]) -> Path:
    """Every case of each NIfTI set as ``SET|NAME|image`` (int16 HU), ``|label``, ``|spacing``."""
    from sam2ct.training import load_nifti_cases

    arrays = {}
    for split, root in sets.items():
        for case in load_nifti_cases(root):
            arrays[f"{split}|{case.name}|image"] = np.round(case.image).astype(np.int16)
            arrays[f"{split}|{case.name}|label"] = case.label.astype(np.uint8)
            arrays[f"{split}|{case.name}|spacing"] = np.asarray(case.spacing, dtype=np.float64)
    np.savez_compressed(path, **arrays)
    return path


def run_cli(argv: list[str]) -> dict:
    """``sam2ct ARGV --json`` in this process; its JSON document (raises on a non-zero exit)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = sam2ct([*argv, "--json"])
    if code != 0:
        raise SystemExit(f"sam2ct {argv[0]} failed with exit status {code}")
    return json.loads(stdout.getvalue())


def evaluate(dataset: Path, model: str, out: Path) -> dict:
    """Held-out ``sam2ct evaluate --dataset`` summary of ``model``."""
    return run_cli(["evaluate", "--dataset", str(dataset), "--model", model, "--device", "cpu",
                    "--prompt", KINDS, "--out", str(out)])


def loss_curve(log: Path) -> list[float]:
    """Total loss of every logged step, in step order."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [row["total"] for row in sorted(rows, key=lambda r: r["step"])]


def print_dice_table(summaries: dict[str, dict]) -> None:
    """Mean (median) held-out Dice per model and prompt kind, and empty predictions."""
    kinds = KINDS.split(",")
    print(f"{'model':12s} " + " ".join(f"{k + ' mean (median) [empty]':>30s}" for k in kinds))
    for name, summary in summaries.items():
        cells = []
        for kind in kinds:
            row = summary["kinds"][kind]
            cells.append(f"{row['mean_dice']:.3f} ({row['median_dice']:.3f}) "
                         f"[{row['empty_predictions']}/{row['n']}]")
        print(f"{name:12s} " + " ".join(f"{c:>30s}" for c in cells))


def print_loss(losses: list[float]) -> None:
    """First and last 10-step means, and the mean of each tenth of the run."""
    k = min(10, len(losses))
    print(f"loss: first {k} steps mean {np.mean(losses[:k]):.4f}, "
          f"last {k} steps mean {np.mean(losses[-k:]):.4f}")
    parts = np.array_split(np.asarray(losses), min(10, len(losses)))
    print("loss by tenth of the run: " + " ".join(f"{p.mean():.3f}" for p in parts))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-studies", type=int, default=6)
    p.add_argument("--heldout-studies", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="image side and model input size")
    p.add_argument("--slices", type=int, default=32, help="slices per synthetic series")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW rate (CLI default 1e-5)")
    p.add_argument("--clip-length", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="init weights and training seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (on a shared 2-core machine 1 is faster than 2)")
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp)")
    p.add_argument("--pack", type=Path, default=None,
                   help="only write the train and held-out sets to this .npz and stop")
    return p.parse_args()


def run(args: argparse.Namespace, work: Path) -> None:
    """Data, init, train, evaluate, print."""
    from sam2ct.model import SAM2CTConfig, build_sam2ct, save_checkpoint

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_data = make_dataset(work / "train", args.train_studies, 101, args.size, args.slices)
    heldout = make_dataset(work / "heldout", args.heldout_studies, 202, args.size, args.slices)
    print(f"data: {args.train_studies} train + {args.heldout_studies} held-out studies, "
          f"{args.size} px x {args.slices} slices ({time.perf_counter() - start:.0f} s)")
    if args.pack is not None:
        pack_cases(args.pack, {"train": train_data, "heldout": heldout})
        print(f"packed: {args.pack} ({args.pack.stat().st_size / 2**20:.1f} MiB)")
        return
    config = SAM2CTConfig(image_size=args.size)
    init = save_checkpoint(work / "init.pt", build_sam2ct(config, seed=args.seed), config)

    trained = run_cli(["train", "--data", str(train_data), "--init", str(init),
                       "--out", str(work / "run"), "--image-size", str(args.size),
                       "--steps", str(args.steps), "--lr", str(args.lr),
                       "--clip-length", str(args.clip_length), "--seed", str(args.seed),
                       "--device", "cpu", "--log-every", "1", "--save-every", str(args.steps),
                       "--no-resume"])
    print(f"train: {trained['cases']} cases, {trained['steps_done']} steps in "
          f"{trained['seconds']:.0f} s = {trained['steps_done'] / trained['seconds']:.3f} steps/s "
          f"(clip {args.clip_length} slices, lr {args.lr:g}, {args.threads} threads)")
    print_loss(loss_curve(work / "run" / "train_log.jsonl"))

    summaries = {}
    for name, model in (("classical", "classical"), ("init", str(init)),
                        ("trained", trained["checkpoint"])):
        began = time.perf_counter()
        summaries[name] = evaluate(heldout, model, work / f"eval-{name}")
        print(f"evaluate {name}: {summaries[name]['lesion_rows']} rows, "
              f"{len(summaries[name]['skipped'])} skipped ({time.perf_counter() - began:.0f} s)")
    print("held-out Dice (random init: no ImageNet/SAM2 pre-training available):")
    print_dice_table(summaries)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.workdir is not None:
        arguments.workdir.mkdir(parents=True, exist_ok=True)
        run(arguments, arguments.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="sam2ct-learning-") as tmp:
            run(arguments, Path(tmp))
