"""`sam2ct demo` end to end, twice on the same --workdir: the second run adds no row and no file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, dciodvfy_errors

pytestmark = pytest.mark.slow

TABLES = ("study", "series", "presentation_state", "annotation", "segmentation", "failure",
          "harvest_run")


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SAM2CT_"))}
    cmd = [sys.executable, "-m", "flows", "demo", "--workdir", str(workdir), "--studies", "1",
           "--size", "64", "--model", "classical", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _rows(catalog: Path) -> dict[str, int]:
    with sqlite3.connect(catalog) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _files(workdir: Path) -> set[Path]:
    return {p.relative_to(workdir) for p in workdir.rglob("*") if p.is_file()}


def test_demo_runs_and_rerun_adds_nothing(tmp_path):
    workdir = tmp_path / "demo"
    first = _demo(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "report:" in first.stdout and "catalog:" in first.stdout
    rows = _rows(workdir / "catalog.sqlite")
    assert rows["segmentation"] > 0 and rows["failure"] == 0 and rows["harvest_run"] == 1
    segs = sorted((workdir / "seg").rglob("*.dcm"))
    assert segs, "no SEG written"
    assert dciodvfy_errors(segs[0]) == []
    html = (workdir / "report.html").read_text()
    with sqlite3.connect(workdir / "catalog.sqlite") as conn:
        ok = conn.execute("SELECT count(*) FROM segmentation WHERE status = 'ok'").fetchone()[0]
    assert ok > 0 and html.count("<img") == ok  # one preview per segment
    assert "SYNTH^" not in html and "SYN0" not in html  # no patient name or ID
    files = _files(workdir)

    second = _demo(workdir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already done" in second.stdout
    assert _rows(workdir / "catalog.sqlite") == rows, "the re-run added catalog rows"
    assert _files(workdir) == files, "the re-run added files"
    assert "SYNTH^" not in first.stdout + second.stdout + first.stderr + second.stderr


def test_demo_falls_back_to_pynetdicom_qrscp(tmp_path):
    """The PACS the demo uses where Orthanc is not installed (forced here with --pacs)."""
    workdir = tmp_path / "demo"
    run = _demo(workdir, "--pacs", "pynetdicom-qrscp")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "PACS:      pynetdicom-qrscp" in run.stdout
    assert (workdir / "pacs" / "pynetdicom-qrscp" / "loaded.json").is_file()
    assert not (workdir / "pacs" / "orthanc").exists()
    rows = _rows(workdir / "catalog.sqlite")
    assert rows["segmentation"] > 0 and rows["failure"] == 0 and rows["harvest_run"] == 1
    with sqlite3.connect(workdir / "catalog.sqlite") as conn:
        paths = [p for (p,) in conn.execute("SELECT seg_path FROM segmentation WHERE status = 'ok'")]
    assert paths and all(Path(p).is_file() for p in paths)
