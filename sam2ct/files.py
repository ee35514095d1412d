"""sam2ct's files (checkpoints, evaluation tables) written whole or not at all.

sam2ct imports nothing of the project's other packages, so it cannot use ``dicom_io.files``;
this is the same pattern for sam2ct alone: a temporary name beside the target, then a rename.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary path to write; it becomes ``path`` if the block succeeds, else is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
