"""Worker processes that start fast and whose logs come back to this process's loggers.

Used where Python work must run on several cores at once (threads share one GIL): the parts of
a retrieval (:mod:`dicom_io.pacs.parallel`) and the flows' segment jobs. Workers are forked from
the forkserver, which imports the ``preload`` modules once: rather than fork, because the caller
has threads (pynetdicom's, a storage SCP's, Prefect's) that a plain fork would copy in whatever
state they are; rather than spawn, because a fresh interpreter per worker imports everything
again (seconds for numpy, pydicom, highdicom and scipy).

The forkserver is one per process: its preload is fixed when it first starts, so a later pool
with other modules gets them imported in each worker instead (correct, only slower to start).

Example
-------
>>> with worker_pool(2, preload=["json"]) as pool:
...     pool.submit(sum, [1, 2, 3]).result()
6
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener


class _ToOwnLogger(logging.Handler):
    """Hands a worker's record to the logger of the same name in this process."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _log_to(queue: multiprocessing.Queue, levels: dict[str, int]) -> None:
    """Worker start: every record goes to ``queue``, at the levels the parent's loggers use."""
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(queue)]
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def _levels(loggers: Sequence[str]) -> dict[str, int]:
    return {name: logging.getLogger(name or None).getEffectiveLevel() for name in loggers}


def start_forkserver(preload: Sequence[str]) -> None:
    """Start this process's forkserver now, importing ``preload``; returns at once.

    The imports (seconds) then run in the server while the caller goes on, so a later
    :func:`worker_pool` with the same ``preload`` forks its first worker in milliseconds
    instead of waiting for them. Does nothing when the forkserver already runs.
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
    multiprocessing.forkserver.ensure_running()


@contextmanager
def worker_pool(workers: int, preload: Sequence[str],
                loggers: Sequence[str] = ("",)) -> Iterator[ProcessPoolExecutor]:
    """``workers`` processes forked from a forkserver that imported ``preload``.

    ``loggers`` (names; "" is the root) get in each worker the level they have here, so a
    worker does not format records this process would drop. Records come back through a queue
    and are handled by this process's loggers of the same names.
    """
    if workers < 1:
        raise ValueError(f"Invalid 'workers' value '{workers}' - must be >= 1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    queue = context.Queue()
    listener = QueueListener(queue, _ToOwnLogger())
    listener.start()
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_log_to,
                                 initargs=(queue, _levels(loggers))) as pool:
            yield pool
    finally:
        listener.stop()
        queue.close()


__all__ = ["start_forkserver", "worker_pool"]
