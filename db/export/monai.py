"""MONAI datalist JSON (``load_decathlon_datalist`` format) over NIfTI pairs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from db.export.manifest import ManifestRow
from dicom_io.files import write_text_atomic

DATALIST_NAME = "datalist.json"
_SECTIONS = {"train": "training", "val": "validation", "test": "test"}


class MonaiLayout:
    """images/ and labels/ plus datalist.json with training / validation / test lists."""

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative image and label paths of a case."""
        return f"images/{case_id}.nii.gz", f"labels/{case_id}.nii.gz"

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> None:
        """Write datalist.json with paths relative to the export folder."""
        document: dict[str, list[dict[str, str]]] = {v: [] for v in _SECTIONS.values()}
        for row in sorted(rows, key=lambda r: r.case_id):
            document[_SECTIONS[row.split]].append({"image": row.image, "label": row.label,
                                                   "case_id": row.case_id})
        write_text_atomic(out / DATALIST_NAME, json.dumps(document, indent=2) + "\n")
