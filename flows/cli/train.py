"""`sam2ct train --data DIR --init CKPT --out DIR`: fine-tune SAM2CT on lesion datasets.

``--data`` holds NIfTI image/label pairs (nnU-Net ``imagesTr``/``labelsTr``, ``images``/``labels``
or ``X_image.nii.gz`` + ``X_label.nii.gz``) and/or one sub-folder per case with a CT series and its
RTSTRUCT or SEG (read through dicom_io here; sam2ct itself takes arrays).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from flows.cli.bounds import SEED_MAX, bounded_float, bounded_int

logger = logging.getLogger(__name__)
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="fine-tune SAM2CT on image + lesion-mask volumes")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (NIfTI pairs, DICOM)")
    p.add_argument("--init", required=True,
                   help="SAM2CT or SAM2.1 Hiera-T checkpoint to start from ('random': none)")
    p.add_argument("--out", required=True, type=Path, help="folder for checkpoints and logs")
    p.add_argument("--steps", type=bounded_int(1, 10**8),
                   default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--image-size", type=bounded_int(64, 4096), default=None,
                   help="model input size (default: the --init checkpoint's, else 1024)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument("--lr", type=bounded_float(1e-12, 1.0),
                   default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--clip-length", type=bounded_int(2, 256),
                   default=8, help="slices per clip (default 8)")
    p.add_argument("--roi", default=None, help="RTSTRUCT ROI / SEG segment for DICOM cases")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX), default=0)
    p.add_argument("--log-every", type=bounded_int(1, 10**8), default=10)
    p.add_argument("--save-every", type=bounded_int(1, 10**8), default=100)
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load cases and the initial model, train, print where the checkpoint went."""
    from sam2ct.model import SAM2CTConfig, build_sam2ct, load_sam2ct
    from sam2ct.model.segmenter import default_device
    from sam2ct.training import TrainConfig, load_nifti_cases, train

    config = SAM2CTConfig(image_size=args.image_size) if args.image_size else None
    train_config = TrainConfig(steps=args.steps, lr=args.lr, clip_length=args.clip_length,
                               seed=args.seed, log_every=args.log_every,
                               save_every=args.save_every, amp=not args.no_amp)
    cases = load_nifti_cases(args.data) + load_dicom_cases(args.data, args.roi)
    if not cases:
        raise ValueError(f"{args.data}: no training cases (NIfTI pairs or DICOM + SEG/RTSTRUCT)")
    device = args.device or default_device()
    if args.init == "random":
        config = config or SAM2CTConfig()
        model = build_sam2ct(config, seed=args.seed).to(device)
    else:
        model, report = load_sam2ct(Path(args.init), device, config)
        config = config or SAM2CTConfig.from_dict(report.config)
        logger.info("init %s (%s, sha256 %s)", args.init, report.kind, report.sha256[:12])
    logger.info("training on %d cases, %d steps, %s", len(cases), args.steps, device)
    result = train(model, cases, args.out, config, train_config, resume=not args.no_resume)
    summary = {"cases": len(cases), "steps_done": result.steps_done,
               "first_loss": result.first_loss, "last_loss": result.last_loss,
               "checkpoint": str(result.checkpoint), "seconds": round(result.seconds, 1)}
    print(json.dumps(summary, indent=2) if args.json else
          f"trained {result.steps_done} steps in {result.seconds:.0f} s -> {result.checkpoint}")
    return 0


def _truth_files(folder: Path) -> list[Path]:
    """RTSTRUCT / SEG files directly or deeper under ``folder``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError):
            continue
        if str(ds.get("SOPClassUID", "")) in (RTSTRUCT, SEG):
            found.append(path)
    return found


def load_dicom_cases(root: Path, roi: str | None) -> list:
    """One LesionCase per sub-folder of ``root`` holding a CT series and an RTSTRUCT or SEG."""
    import numpy as np

    from dicom_io.errors import DicomInputError
    from dicom_io.truth import read_truth
    from dicom_io.volume import load_series
    from sam2ct.training import LesionCase

    cases = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        truths = _truth_files(folder)
        if not truths:
            continue
        try:
            volume = load_series(folder)
            label = read_truth(truths[0], volume, roi)
        except DicomInputError as exc:
            logger.warning("skipping %s: %s", folder.name, exc)
            continue
        if np.any(label):
            cases.append(LesionCase(folder.name, volume.array.astype(np.float32), label,
                                    volume.spacing))
    return cases
