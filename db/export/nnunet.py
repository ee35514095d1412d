"""nnU-Net v2 raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json.

Test-split cases go to imagesTs/labelsTs; train/val become ``splits_final.json`` (one fold), which
nnU-Net reads when copied to its preprocessed folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from db.export.manifest import ManifestRow
from dicom_io.files import write_text_atomic

FILE_ENDING = ".nii.gz"


class NnUNetLayout:
    """The nnU-Net v2 raw layout for one CT channel and one foreground label."""

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative image and label paths: Tr for train/val, Ts for test."""
        part = "Ts" if split == "test" else "Tr"
        return f"images{part}/{case_id}_0000{FILE_ENDING}", f"labels{part}/{case_id}{FILE_ENDING}"

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> None:
        """Write dataset.json (numTraining = cases in imagesTr) and splits_final.json."""
        training = [r for r in rows if r.split != "test"]
        dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
                   "numTraining": len(training), "file_ending": FILE_ENDING,
                   "name": "SAM2CT harvest", "description": "GSPS-prompted CT lesions"}
        _write_json(out / "dataset.json", dataset)
        fold = {"train": sorted(r.case_id for r in training if r.split == "train"),
                "val": sorted(r.case_id for r in training if r.split == "val")}
        _write_json(out / "splits_final.json", [fold])


def _write_json(path: Path, document: object) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
