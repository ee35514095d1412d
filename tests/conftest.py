"""Shared fixtures: real data paths, DICOM validation with dciodvfy, free loopback ports, fresh
PostgreSQL databases."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAM2CT_SHARED_DATA", REPO.parent / "shared" / "data"))
#: the test server's admin database (trust auth on loopback, see the README)
PG_ADMIN = os.environ.get("SAM2CT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared(relative: str) -> Path:
    """A path under ../shared/data; skips the test with a clear reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"third-party test data not present: {path} (see ../shared/data/README.md)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dicom3tools' dciodvfy on a file; return its 'Error' lines (empty = valid)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def forked_workers() -> list[int]:
    """PIDs of the worker processes forked by this process's forkserver (segment workers)."""
    parents, cmdlines = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdlines[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    servers = {pid for pid, parent in parents.items()
               if parent == os.getpid() and b"multiprocessing.forkserver" in cmdlines[pid]}
    return [pid for pid, parent in parents.items() if parent in servers]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database: yields its SQLAlchemy URL, drops it (``WITH FORCE``)
    afterwards. The test skips, naming the server, when PostgreSQL is not reachable."""
    import psycopg

    dsn = PG_ADMIN.replace("+psycopg", "")
    try:
        admin = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL at {dsn} not reachable: {e}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def lung1_001() -> Path:
    return shared("lung1/LUNG1-001")


@pytest.fixture(scope="session")
def lung1_002() -> Path:
    return shared("lung1/LUNG1-002")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small synthetic studies made once per test session by `sam2ct synth`'s library call."""
    from dicom_io.synth import make_studies

    out = tmp_path_factory.mktemp("synth")
    make_studies(out, studies=2, seed=7, size=192)
    return out


@pytest.fixture(scope="session")
def lung1_001_volume(lung1_001: Path):
    """LUNG1-001 loaded once per test session (the loader takes seconds on this machine)."""
    from dicom_io.volume import load_series

    return load_series(lung1_001 / "ct")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: several times faster on the shared 2-core CI box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
