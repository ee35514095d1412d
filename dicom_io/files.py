"""Files written whole or not at all: a temporary name beside the target, then one rename.

A reader never sees half a file, and a crash leaves at most a hidden ``.NAME.<random>.tmp``
beside it (``TEMP_GLOB``), never a truncated NAME. The one home of this pattern for dicom_io,
db and flows (sam2ct, which imports none of them, keeps ``sam2ct.files``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMP_GLOB = ".*.tmp*"  # what an interrupted write leaves behind


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "", make_parents: bool = True
                ) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    well, removed when it raises.

    ``suffix`` ends the temporary name for writers that choose a format by it (``.nii.gz``).
    ``make_parents=False`` skips creating the folder (the caller knows it exists).

    Example
    -------
    >>> with atomic_path(Path("out/seg.dcm")) as tmp:  # doctest: +SKIP
    ...     dataset.save_as(tmp)
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, *chunks: bytes, make_parents: bool = True) -> Path:
    """Write ``chunks`` one after the other to ``path`` (``atomic_path``); returns ``path``."""
    with atomic_path(path, make_parents=make_parents) as tmp, open(tmp, "xb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` (``atomic_path``); returns ``path``."""
    return write_atomic(path, text.encode("utf-8"))
