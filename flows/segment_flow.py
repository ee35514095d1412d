"""The ``segment`` deployment: segment batches of retrieved series and catalog the results.

Runs on the GPU work pool (called with ``run_deployment`` by the harvest). Without a pool the
harvest calls :func:`segment_one` itself, in its own flow, as each series arrives (a subflow
would cost a flow run's start and end for nothing), and the task hands the job to one of the
run's segment worker processes (:mod:`flows.segment_jobs`). The model is loaded once per process
and reused by every series; each series is one task that loads its volume from disk, so no array
ever crosses a task (or process) boundary.

Example
-------
>>> segment_batch([SeriesJob(study_instance_uid="1.2", series_instance_uid="1.2.3",
...                          series_dir="staging/1.2/1.2.3", gsps_files=["pr.dcm"])],
...               catalog_url="sqlite:///c.sqlite", output_dir="seg")  # doctest: +SKIP
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from pydantic import SecretStr

from dicom_io.printable import escape_logs
from flows.segment_jobs import SegmentWorkers, SeriesJob, SeriesOutcome, run_job


@contextmanager
def gpu_slot(device: str | None) -> Iterator[None]:
    """On a GPU, hold ``gpu:<host>`` (a global concurrency limit, when defined) while segmenting."""
    if device is None or not device.startswith("cuda"):
        yield
        return
    with concurrency(f"gpu:{socket.gethostname()}", occupy=1):
        yield


@task(name="segment-series", cache_policy=NO_CACHE)
def segment_one(job: SeriesJob, catalog_url: str, output_dir: str, model: str = "auto",
                device: str | None = None, run_id: int | None = None,
                workers: SegmentWorkers | None = None) -> SeriesOutcome:
    """Load one series, segment every usable annotation, write SEGs, record it all: here, or
    on one of ``workers`` (whose model and device then apply)."""
    with gpu_slot(device):
        if workers is None:
            return run_job(job, catalog_url, output_dir, model, device, run_id)
        return workers.run(job, catalog_url, output_dir, run_id)


@flow(name="segment-batch")
def segment_batch(series: list[SeriesJob], catalog_url: SecretStr | str | None, output_dir: str,
                  model: str = "auto", device: str | None = None,
                  run_id: int | None = None) -> list[SeriesOutcome]:
    """Segment a batch of series one after another (one GPU, the model loaded once).

    ``catalog_url`` None: the worker's own settings (SAM2CT_DATABASE_URL) name the catalog; a
    SecretStr keeps a password out of Prefect's stored parameters.
    """
    escape_logs()  # Prefect configured logging: control characters in our log lines escaped
    if isinstance(catalog_url, SecretStr):
        catalog_url = catalog_url.get_secret_value()
    if catalog_url is None:
        from flows.settings import Settings

        catalog_url = Settings().catalog_url
    return [segment_one(job, catalog_url, output_dir, model, device, run_id) for job in series]
