"""What every export format provides: where a case's files go, and the closing index files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from db.export.manifest import ManifestRow


class Layout(Protocol):
    """An export format's folder layout."""

    index_files: tuple[str, ...]  # what finalize writes, relative to the export folder

    def paths(self, case_id: str, split: str) -> tuple[str, str]:
        """Image and label paths of a case, relative to the export folder."""

    def finalize(self, out: Path, rows: Sequence[ManifestRow]) -> dict[str, int]:
        """Write the format's index files (dataset.json, datalist.json, ...) for these rows;
        return figures worth reporting (e.g. ``{"folds": 5}``)."""
