"""Time and memory limits of one segment job, enforced on the segment workers.

A series whose volume or prompts make the model run for hours, or grow without bound, must end
as that series' recorded failure, not as a worker that never comes back:

- time: :class:`~flows.segment_jobs.SegmentWorkers` waits ``seconds`` for a job's outcome; past
  it the worker processes are killed and replaced, and the job raises :class:`WorkerStuck` (the
  series' recorded failure). The limit is kept from outside, not by interrupting the job in its
  process: an exception thrown into arbitrary code (a signal handler) can leave a lock held and
  the worker hung for good, and native code would not see it anyway;
- memory: each worker's address space is capped (``RLIMIT_AS``), so a runaway allocation is a
  ``MemoryError`` that the job records, not the machine swapping or the kernel killing at random.

Example
-------
>>> JobLimits(seconds=600).worker_memory_mb(4, "cuda") is None
True
"""

from __future__ import annotations

import logging
import os
import resource

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


class JobLimits(BaseModel):
    """How long and how much memory one segment job may take (None: no limit)."""

    model_config = ConfigDict(frozen=True)

    seconds: float | None = Field(3600.0, gt=0, description="wall-clock seconds per series")
    memory_mb: int | None = Field(None, ge=256, description="address space per worker process "
                                  "(MiB); None: 80 % of the machine's memory shared by workers")

    def worker_memory_mb(self, workers: int, device: str | None) -> int | None:
        """The address-space cap of each of ``workers`` CPU worker processes (None on a GPU,
        whose driver reserves far more address space than it uses)."""
        if device is not None and not device.startswith("cpu"):
            return None
        if self.memory_mb is not None:
            return self.memory_mb
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        return max(2048, int(0.8 * total / max(1, workers)))


class WorkerStuck(RuntimeError):
    """A job did not end within its time limit: its worker processes were killed."""


def cap_memory(megabytes: int | None) -> None:
    """Cap this process's address space at ``megabytes`` (None: back to the hard limit);
    beyond it an allocation raises ``MemoryError``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = hard if megabytes is None else megabytes * 2**20
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want != soft:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
        logger.debug("address space of process %d capped at %s", os.getpid(),
                     "no limit" if want == resource.RLIM_INFINITY else f"{want >> 20} MiB")


__all__ = ["JobLimits", "WorkerStuck", "cap_memory"]
