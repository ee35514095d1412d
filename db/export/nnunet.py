"""nnU-Net v2: a raw dataset and its cross-validation splits, where nnU-Net looks for each.

``<out>/nnUNet_raw/<DatasetNNN_Name>/``: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz,
imagesTs/labelsTs for the test split, dataset.json. ``<out>/nnUNet_preprocessed/<DatasetNNN_Name>/
splits_final.json``: five cross-validation folds over imagesTr, whole patients per fold, which
nnU-Net's trainer reads instead of drawing its own random (not patient-grouped) folds. Point
``nnUNet_raw`` and ``nnUNet_preprocessed`` at the two folders.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from db.export.manifest import ManifestRow
from db.export.splits import cross_validation_folds
from dicom_io.files import write_text_atomic

FILE_ENDING = ".nii.gz"
DEFAULT_DATASET = "Dataset501_SAM2CT"
FOLDS = 5
_DATASET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9][A-Za-z0-9_-]*")

log = logging.getLogger(__name__)


def check_dataset_name(name: str) -> str:
    """``name`` when it is an nnU-Net dataset folder name (DatasetNNN_Name), else ValueError."""
    if not _DATASET_NAME.fullmatch(name):
        raise ValueError(f"Invalid nnU-Net dataset '{name}' - expected DatasetNNN_Name with "
                         f"three digits, e.g. Dataset501_Lesions")
    return name


class NnUNetLayout:
    """The nnU-Net v2 layout for one CT channel and one foreground label."""

    def __init__(self, dataset: str = DEFAULT_DATASET, seed: int = 0) -> None:
        self.raw = f"nnUNet_raw/{check_dataset_name(dataset)}"
        self.preprocessed = f"nnUNet_preprocessed/{dataset}"
        self.seed = seed
        self.index_files = (f"{self.raw}/dataset.json", f"{self.preprocessed}/splits_final.json")

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative image and label paths: Tr for train/val, Ts for test."""
        part = "Ts" if split == "test" else "Tr"
        return (f"{self.raw}/images{part}/{case_id}_0000{FILE_ENDING}",
                f"{self.raw}/labels{part}/{case_id}{FILE_ENDING}")

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> dict[str, int]:
        """Write dataset.json (numTraining = cases in imagesTr) and splits_final.json."""
        training = [r for r in rows if r.split != "test"]
        dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
                   "numTraining": len(training), "file_ending": FILE_ENDING,
                   "name": "SAM2CT harvest", "description": "GSPS-prompted CT lesions"}
        _write_json(out / self.raw / "dataset.json", dataset)
        folds = cross_validation_folds({r.case_id: r.patient for r in training}, self.seed, FOLDS)
        splits = out / self.preprocessed / "splits_final.json"
        if folds:
            _write_json(splits, folds)
        else:
            splits.unlink(missing_ok=True)
        if len(folds) < FOLDS:
            log.warning("only %d patient(s) in imagesTr: %d patient-grouped fold(s); nnU-Net "
                        "draws any other fold at random", len({r.patient for r in training}),
                        len(folds))
        return {"folds": len(folds)}


def _write_json(path: Path, document: object) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
