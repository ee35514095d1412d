"""NIfTI image + label pairs: images/<case>.nii.gz, labels/<case>.nii.gz."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from db.export.manifest import ManifestRow


class NiftiLayout:
    """Plain pairs; the manifest says which split each case is in."""

    index_files: tuple[str, ...] = ()

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Relative image and label paths of a case."""
        return f"images/{case_id}.nii.gz", f"labels/{case_id}.nii.gz"

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> dict[str, int]:
        """Nothing beyond the manifest."""
        return {}
