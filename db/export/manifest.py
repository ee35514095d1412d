"""The export manifest (CSV): one row per finished case; it is also the resume record."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dicom_io.files import write_text_atomic

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class ManifestRow:
    """One exported case: where its files are and what went into it."""

    case_id: str
    split: str
    patient: str
    image: str  # relative to the export folder (a folder for the DICOM format)
    label: str
    segmentation_ids: str  # ';'-joined catalog ids
    label_voxels: int
    study_instance_uid: str = ""  # empty in de-identified exports
    series_instance_uid: str = ""


class Manifest:
    """Reads the rows already written and appends new ones (rewritten atomically each time)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / MANIFEST_NAME
        self.rows: dict[str, ManifestRow] = {}
        if self.path.exists():
            with self.path.open(newline="") as f:
                for record in csv.DictReader(f):
                    record["label_voxels"] = int(record["label_voxels"])
                    row = ManifestRow(**record)
                    self.rows[row.case_id] = row

    def done(self, case_id: str, folder: Path) -> bool:
        """True when the case is in the manifest and its files are still there."""
        row = self.rows.get(case_id)
        return row is not None and all((folder / p).exists() for p in (row.image, row.label) if p)

    def add(self, row: ManifestRow) -> None:
        """Record a finished case and rewrite the file (temp name, then rename)."""
        self.rows[row.case_id] = row
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(ManifestRow)])
        writer.writeheader()
        for r in sorted(self.rows.values(), key=lambda r: r.case_id):
            writer.writerow(asdict(r))
        write_text_atomic(self.path, buffer.getvalue())
