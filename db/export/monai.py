"""MONAI datalist JSON (``load_decathlon_datalist`` / ``load_decathlon_properties``) over NIfTI.

Sections without a case are left out (MONAI's loader fails on an empty ``test`` list); the
Decathlon properties (``labels``, ``modality``, counts) sit beside them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from db.export.manifest import ManifestRow
from dicom_io.files import write_text_atomic

DATALIST_NAME = "datalist.json"
_SECTIONS = {"train": "training", "val": "validation", "test": "test"}
_COUNTS = {"training": "numTraining", "validation": "numValidation", "test": "numTest"}


class MonaiLayout:
    """images/ and labels/ plus datalist.json with training / validation / test lists."""

    index_files = (DATALIST_NAME,)

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative image and label paths of a case."""
        return f"images/{case_id}.nii.gz", f"labels/{case_id}.nii.gz"

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> dict[str, int]:
        """Write datalist.json with paths relative to the export folder."""
        sections: dict[str, list[dict[str, str]]] = {}
        for row in sorted(rows, key=lambda r: r.case_id):
            sections.setdefault(_SECTIONS[row.split], []).append(
                {"image": row.image, "label": row.label, "case_id": row.case_id})
        document: dict[str, object] = {
            "name": "SAM2CT harvest", "description": "GSPS-prompted CT lesions",
            "tensorImageSize": "3D", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "lesion"}}
        document.update({_COUNTS[name]: len(sections.get(name, ())) for name in _COUNTS})
        document.update(sections)
        write_text_atomic(out / DATALIST_NAME, json.dumps(document, indent=2) + "\n")
        return {}
