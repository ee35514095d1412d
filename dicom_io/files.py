"""Files written whole or not at all: a temporary name beside the target, then one rename.

A reader never sees half a file, and a crash leaves at most a hidden ``.NAME.<pid>-<random>.tmp``
beside it (``TEMP_GLOB``), never a truncated NAME; ``remove_stale_temps`` clears those a dead
writer left, at the start of the commands and flows that write into a folder. The one home of
this pattern for dicom_io, db and flows (sam2ct, which imports none of them, keeps
``sam2ct.files``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_GLOB = ".*.tmp*"  # what an interrupted write leaves behind
#: the writer's pid in a temporary name (``atomic_path``; older names and sam2ct's have none)
_WRITER_PID = re.compile(r"\.(\d+)-[0-9a-f]+\.tmp")
#: a temporary file whose writer is gone is left this long, in case the writer runs in another
#: pid namespace (a container sharing the folder) and is still writing; seconds
STALE_AFTER_DEAD = 60.0
#: a temporary file this old is stale whoever wrote it (a write takes seconds); seconds
STALE_AFTER = 24 * 3600.0


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{suffix}")
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


def remove_stale_temps(folder: str | Path, now: float | None = None) -> int:
    """Remove the temporary files (``TEMP_GLOB``) under ``folder`` that no writer will finish.

    A temporary file is stale when its writer's pid (in its name) is no longer running here and
    it was last written over ``STALE_AFTER_DEAD`` seconds ago, or when it is over
    ``STALE_AFTER`` seconds old whoever wrote it. A live writer's file is kept.

    Parameters
    ----------
    folder
        Searched recursively; a missing folder has nothing to remove.
    now
        The time to measure ages from (``time.time()`` by default).

    Returns
    -------
    int
        How many files were removed.
    """
    now = time.time() if now is None else now
    removed = 0
    for path in Path(folder).rglob(TEMP_GLOB):
        try:
            if path.is_file() and _is_stale(path, now - path.stat().st_mtime):
                path.unlink()
                removed += 1
        except OSError:  # gone meanwhile (its writer renamed it) or not ours to remove
            continue
    if removed:
        logger.info("removed %d stale temporary file(s) under %s", removed, folder)
    return removed


def _is_stale(path: Path, age: float) -> bool:
    if age > STALE_AFTER:
        return True
    match = _WRITER_PID.search(path.name)
    return match is not None and age > STALE_AFTER_DEAD and not _running(int(match.group(1)))


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True
