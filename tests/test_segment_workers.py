"""Segment jobs in worker processes: what a job in this process gives, on a share of the cores."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from conftest import forked_workers

from flows.segment_jobs import SegmentWorkers, SeriesJob, run_job, segmenter


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    """One small synthetic study (96 px, 24 slices, 10 GSPS)."""
    from dicom_io.synth import make_studies

    root = tmp_path_factory.mktemp("workers-study")
    manifest = json.loads(make_studies(root, studies=1, seed=3, size=96, slices=24).read_text())
    return root, manifest["studies"][0]


def _job(study: tuple[Path, dict]) -> SeriesJob:
    root, st = study
    return SeriesJob(study_instance_uid=st["study_instance_uid"],
                     series_instance_uid=st["series_instance_uid"],
                     series_dir=str(root / st["ct_dir"]),
                     gsps_files=[str(root / g["file"]) for g in st["gsps"]])


def test_a_job_on_a_worker_gives_what_it_gives_here(study, tmp_path: Path) -> None:
    from db.queries import table_counts
    from flows.segment_jobs import catalog_engine

    job = _job(study)
    urls = {k: f"sqlite:///{tmp_path / k}.sqlite" for k in ("here", "worker")}
    here = run_job(job, urls["here"], str(tmp_path / "here"), "classical")
    with SegmentWorkers(2, "classical", None, urls["worker"]) as workers:
        there = workers.run(job, urls["worker"], str(tmp_path / "worker"))
    assert there.failed_stage is None and there.ok == here.ok > 0
    assert (there.failed, there.skipped) == (here.failed, here.skipped)
    assert [Path(p).name for p in there.seg_paths] == [Path(p).name for p in here.seg_paths]
    assert all(Path(p).is_file() for p in there.seg_paths + there.preview_paths)
    assert table_counts(catalog_engine(urls["worker"])) == table_counts(catalog_engine(urls["here"]))
    assert len(there.model_spans) == len(there.seg_paths)  # one model call per GSPS
    assert all(end >= start for start, end in there.model_spans)


def _blas_threads(threads: int) -> list[int]:
    from threadpoolctl import threadpool_info

    segmenter("classical", None, threads)
    return [lib["num_threads"] for lib in threadpool_info()]


def test_a_worker_keeps_to_its_share_of_the_cores() -> None:
    """BLAS (numpy's and scipy's OpenBLAS) runs one thread per share, not one per core."""
    from dicom_io.processes import worker_pool

    with worker_pool(1, preload=["flows.segment_jobs"]) as pool:
        threads = pool.submit(_blas_threads, 1).result()
    assert threads and set(threads) == {1}


_FORKSERVER_SCRIPT = """
import sys

from dicom_io.processes import start_forkserver, worker_pool


def imported(name):
    return name in sys.modules


if __name__ == "__main__":
    start_forkserver(["colorsys"])
    with worker_pool(1, preload=["json"]) as pool:
        print(pool.submit(imported, "colorsys").result())
"""


def test_the_forkserver_started_ahead_is_the_one_workers_come_from(tmp_path: Path) -> None:
    """``prepare_workers`` starts the forkserver at once, with its imports, for the pools that
    come later (in a fresh interpreter: a forkserver's preload is fixed when it starts)."""
    import subprocess
    import sys

    from conftest import REPO

    script = tmp_path / "forkserver_ahead.py"
    script.write_text(_FORKSERVER_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"]


def test_a_killed_worker_fails_its_job_and_fresh_workers_take_the_next(study,
                                                                        tmp_path: Path) -> None:
    """A worker that dies mid-job (out of memory, killed) makes its job raise; nothing hangs,
    and the jobs after run on a fresh pool rather than all failing for the rest of the night."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    with SegmentWorkers(1, "classical", None, url) as workers, ThreadPoolExecutor(1) as caller:
        first = workers.run(_job(study), url, str(tmp_path / "seg")).ok
        assert first > 0
        victims = forked_workers()
        assert victims, "no worker process found"
        killed = caller.submit(workers.run, _job(study), url, str(tmp_path / "killed"))
        deadline = time.monotonic() + 60
        while not (tmp_path / "killed").exists():  # its first SEG: the job is running
            assert time.monotonic() < deadline and not killed.done()
            time.sleep(0.002)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            killed.result()
        assert workers.run(_job(study), url, str(tmp_path / "seg")).ok == first
        assert workers.renewals == 1
        assert not set(victims) & set(forked_workers())


def test_model_busy_time_is_the_union_of_the_calls() -> None:
    from flows.artifacts import RunSummary

    summary = RunSummary("2026-01-05", "2026-01-05", "PACS")
    summary.model_spans = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]
    assert summary.model_busy_seconds == pytest.approx(4.0)
    assert summary.to_json()["model_busy_s"] == 4.0 and "model_spans" not in summary.to_json()


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="'size'"):
        SegmentWorkers(0, "classical", None, "sqlite://")


# --- time and memory limits -------------------------------------------------------------------

def test_a_series_past_its_time_limit_has_its_worker_replaced(study, tmp_path: Path) -> None:
    """A job that does not end within its limit (its worker frozen here with SIGSTOP, as if
    stuck in native code) raises WorkerStuck; the worker is killed, fresh ones take the next
    jobs."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.limits import JobLimits, WorkerStuck

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    limits = JobLimits(seconds=3.0)
    with SegmentWorkers(1, "classical", None, url, limits) as workers, \
            ThreadPoolExecutor(1) as caller:
        stuck = workers._current().submit(os.getpid).result(timeout=120)
        started = time.monotonic()
        job = caller.submit(workers.run, _job(study), url, str(tmp_path / "seg"))
        while not (tmp_path / "seg").exists():  # the job has loaded its series
            assert not job.done(), job.result()
            time.sleep(0.002)
        os.kill(stuck, signal.SIGSTOP)
        with pytest.raises(WorkerStuck, match="time limit of 3 s; worker processes replaced"):
            job.result(timeout=120)
        waited = time.monotonic() - started
        fresh = workers._current().submit(os.getpid).result(timeout=120)
    assert 3.0 <= waited < 60 and workers.renewals == 1
    assert fresh != stuck and stuck not in forked_workers()


def test_workers_run_jobs_under_their_memory_cap(study, tmp_path: Path) -> None:
    import resource

    from flows.limits import JobLimits

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    with SegmentWorkers(1, "classical", None, url, JobLimits(memory_mb=8192)) as workers:
        assert workers.run(_job(study), url, str(tmp_path / "seg")).ok > 0
        soft, _ = workers._current().submit(resource.getrlimit, resource.RLIMIT_AS).result()
    assert soft == 8192 * 2**20


_CAPPED = """
import numpy as np
from flows.limits import cap_memory

cap_memory(1024)
try:
    np.ones(2**31, dtype=np.uint8)
except MemoryError:
    print("MemoryError")
"""


def test_an_allocation_past_the_cap_is_a_memory_error() -> None:
    """What a job catches and records as its failure, instead of the machine swapping."""
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "-c", _CAPPED], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["MemoryError"]


def test_default_memory_cap_shares_the_machine_and_leaves_gpus_alone() -> None:
    from flows.limits import JobLimits

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    limits = JobLimits()
    assert limits.worker_memory_mb(2, None) == max(2048, int(0.8 * total / 2))
    assert limits.worker_memory_mb(2, "cuda") is None
    assert JobLimits(memory_mb=4096).worker_memory_mb(4, "cpu") == 4096
