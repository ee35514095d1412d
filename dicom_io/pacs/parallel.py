"""Running the parts of one retrieval side by side, never more at once than the PACS allows.

Why: one pynetdicom association receives ~100-150 instances/s of 0.5 MB on loopback
(``bench/bench_pacs_retrieve.py``): its receive path is Python (~4-7 ms of CPU per instance) and
its reactor threads poll every 1 ms. Parts on several associations overlap those waits, and parts
in worker processes also use several cores, which threads sharing one GIL cannot. For C-MOVE only
the requesting side moves to the workers (its pending responses and polling, ~1-2 ms per
instance): the instances still arrive at our one storage SCP, because pynetdicom offers no public
way to share its listening port between processes (``SO_REUSEPORT``).

The cap still holds, whichever process opens the association: a part that runs in a worker
process runs while the thread that waits for it holds a slot of the PACS's :class:`Gate`, and the
worker returns only after its association's socket is closed (``open_association``). What the
workers log reaches this process's loggers (and whatever handlers the caller set up).

Example
-------
>>> split([1, 2, 3, 4, 5], 3)
[[1, 2, 3], [4, 5]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TypeVar

from dicom_io import processes

T = TypeVar("T")
R = TypeVar("R")


def split(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in contiguous runs of ``size`` (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"Invalid 'size' value '{size}' - must be >= 1")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def run_size(count: int, associations: int, minimum: int) -> int:
    """How many instances per part so that ``count`` spread over ``associations``, but never
    fewer than ``minimum`` per part (opening an association costs more than a few instances)."""
    return max(minimum, math.ceil(count / max(1, associations)))


def worker_pool(workers: int) -> AbstractContextManager[ProcessPoolExecutor]:
    """Worker processes with our retrieval code imported (:func:`dicom_io.processes.worker_pool`);
    what they log comes back to this process's ``dicom_io`` and ``pynetdicom`` loggers."""
    return processes.worker_pool(workers, preload=["dicom_io.pacs.retrieve"],
                                 loggers=("", "dicom_io", "pynetdicom"))


def side_by_side(job: Callable[[T], R], parts: Iterable[T], concurrency: int) -> list[R]:
    """``job(part)`` for every part, ``concurrency`` at a time on threads; results in order.

    An exception in a job is raised here once every job has ended.
    """
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="retrieve-part") as threads:
        futures = [threads.submit(job, part) for part in parts]
    return [f.result() for f in futures]


__all__ = ["run_size", "side_by_side", "split", "worker_pool"]
