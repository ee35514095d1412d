"""The command line under attack: bad catalogs, out-of-range numbers, unexpected errors, control
characters in logs and tables, temporary files a killed run left. Every failure is one line on
stderr, exit non-zero, no traceback, no password.

The real console script runs in a subprocess where what reaches the terminal matters (its
logging set-up, its exit status); ``flows.cli.main`` runs in-process elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from conftest import free_port

from dicom_io.files import remove_stale_temps
from dicom_io.printable import printable
from flows.cli import main

SAM2CT = str(Path(sys.executable).with_name("sam2ct"))
PASSWORD = "s3cretPW42"
PG = "127.0.0.1:5432"


def sam2ct(*argv: str, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``sam2ct`` (its output as text) with ``env`` added to ours."""
    return subprocess.run([SAM2CT, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The failed command's only stderr line, checked to hold no traceback and no password."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def refused_port() -> int:
    return free_port()  # nobody listens on it


def bad_urls(port: int, tmp: Path) -> dict[str, tuple[str, str]]:
    """Bad catalog URLs -> (the URL, what its error line must say)."""
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    return {
        "not a URL": ("notaurl", "no catalog at "),  # a SQLite file's path, not there
        "unparsable, password": (f"postgresql+psycopg://u:{PASSWORD}@h:notaport/db",
                                 "not a database URL"),
        "refused port": (f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{port}/x",
                         "Connection refused"),
        "missing database": (f"postgresql+psycopg://postgres:{PASSWORD}@{PG}/sam2ct_no_such_db",
                             "does not exist"),
        "bad sslmode": (f"postgresql+psycopg://postgres:{PASSWORD}@{PG}/test?sslmode=bogus",
                        "sslmode"),
        "bad connect option": (f"postgresql+psycopg://postgres@{PG}/test?connect_timeout=abc",
                               "connect_timeout"),
        "not a SQLite file": ("sqlite:////etc/passwd", "/etc"),
        "folder cannot be made": (f"sqlite:///{blocker}/sub/c.sqlite", "does not exist"),
        "mysql": (f"mysql://u:{PASSWORD}@localhost/db", "not supported"),
        "oracle": (f"oracle://u:{PASSWORD}@localhost/db", "not supported"),
    }


@pytest.mark.parametrize("case", ["not a URL", "unparsable, password", "refused port",
                                  "missing database", "bad sslmode", "bad connect option",
                                  "not a SQLite file", "folder cannot be made", "mysql",
                                  "oracle"])
def test_a_bad_catalog_is_one_line_without_password(case: str, refused_port: int,
                                                    tmp_path: Path) -> None:
    url, says = bad_urls(refused_port, tmp_path)[case]
    lock = Path("/etc/passwd.lock")
    lock_before = lock.exists()
    result = sam2ct("catalog", "stats", env={"SAM2CT_DATABASE_URL": url})
    line = one_error_line(result)
    assert line.startswith("sam2ct catalog: error: ") and says in line, line
    assert result.returncode == 2 and result.stdout == ""
    assert lock.exists() == lock_before  # nothing written beside a file that is no catalog


def test_db_upgrade_of_a_bad_catalog_names_it_masked(refused_port: int, capsys) -> None:
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{refused_port}/x"
    assert main(["db", "upgrade", "--catalog", url]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"u:***@127.0.0.1:{refused_port}/x" in line and PASSWORD not in line


def test_segment_with_a_bad_catalog_writes_nothing(synth_dir: Path, refused_port: int,
                                                   tmp_path: Path) -> None:
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    out = tmp_path / "out"
    result = sam2ct("segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                    str(synth_dir / study["gsps"][0]["file"]), "--out", str(out),
                    "--model", "classical",
                    "--catalog", f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{refused_port}/x")
    assert "Connection refused" in one_error_line(result)
    assert result.stdout == "" and not out.exists()


@pytest.mark.parametrize("command", ["harvest", "reconcile"])
def test_harvest_with_a_bad_catalog_fails_before_prefect_starts(refused_port: int,
                                                               tmp_path: Path,
                                                               command: str) -> None:
    result = sam2ct(command, "--from", "2026-01-05", "--to", "2026-01-05",
                    "--pacs", f"NOBODY@127.0.0.1:{refused_port}", "--out", str(tmp_path / "seg"),
                    "--staging", str(tmp_path / "staging"),
                    "--catalog", f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{refused_port}/x",
                    env={"PREFECT_HOME": str(tmp_path / "prefect")})
    assert one_error_line(result).startswith(f"sam2ct {command}: error: catalog ")
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "seg").exists()


def test_a_huge_limit_is_one_usage_line(tmp_path: Path) -> None:
    result = sam2ct("catalog", "query", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
                    "--limit", "99999999999999999999")
    line = one_error_line(result)
    assert result.returncode == 2 and "--limit" in line and "out of range" in line
    assert not (tmp_path / "c.sqlite").exists()  # refused before the catalog is touched


@pytest.mark.parametrize("argv, option", [
    (["synth", "out", "--size", "1\x1b[31m"], "--size"),
    (["pacs", "echo", "--timeout", "nan"], "--timeout"),
    (["pacs", "echo", "--store-port", "70000"], "--store-port"),
    (["backfill", "--from", "2026-01-01", "--to", "2026-01-02", "--chunk-days", "0"],
     "--chunk-days"),
    (["reconcile", "--from", "2026-01-01", "--to", "2026-01-02", "--chunk-days", "0"],
     "--chunk-days"),
    (["harvest", "--from", "2026-01-01", "--to", "2026-01-02", "--max-associations", "33"],
     "--max-associations"),
    (["catalog", "query", "--min-volume", "-1"], "--min-volume"),
    (["train", "--data", "d", "--init", "random", "--out", "o", "--lr", "inf"], "--lr"),
])
def test_numeric_options_are_bounded(argv: list[str], option: str, capsys) -> None:
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sam2ct ") and f"argument {option}: " in line
    assert "\x1b" not in line


def test_an_unexpected_error_is_one_line_and_verbose_shows_its_traceback(tmp_path: Path
                                                                        ) -> None:
    from db import open_catalog

    catalog = f"sqlite:///{tmp_path / 'c.sqlite'}"
    open_catalog(catalog).dispose()  # a query reads a catalog that exists
    folder = tmp_path / "a-folder"
    folder.mkdir()
    argv = ["catalog", "query", "--catalog", catalog, "--format", "csv", "--out", str(folder)]
    line = one_error_line(sam2ct(*argv))
    assert line.startswith("sam2ct catalog: error: IsADirectoryError: ")
    verbose = sam2ct("-v", *argv)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith(
        "sam2ct catalog: error: IsADirectoryError: ")


def _with_text(source: Path, target: Path, text: str) -> Path:
    """A copy of the GSPS ``source`` whose every text object says ``text``."""
    ds = pydicom.dcmread(source)
    for item in ds.GraphicAnnotationSequence:
        for obj in item.get("TextObjectSequence", []):
            obj.UnformattedTextValue = text
    ds.save_as(target)
    return target


def test_gsps_inspect_escapes_control_characters_in_its_table(synth_dir: Path, tmp_path: Path,
                                                              capsys) -> None:
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    entry = next(g for g in study["gsps"] if g["encoding"] == "line-mm")
    pr = _with_text(synth_dir / entry["file"], tmp_path / "ansi.dcm",
                    "\x1b[2J\x1b[31mLESION\x9b0m\x7f")
    assert main(["gsps", "inspect", str(pr)]) == 0
    out = capsys.readouterr().out
    assert "\\x1b[2J\\x1b[31mLESION\\x9b0m\\x7f" in out
    assert not any(c in out for c in "\x1b\x9b\x7f")


def test_gsps_inspect_error_line_escapes_a_uid(synth_dir: Path, tmp_path: Path, capsys) -> None:
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    ct = sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))[0]
    bad = tmp_path / "bad.dcm"
    _forged_sop_class(ct, bad)
    assert main(["gsps", "inspect", str(bad)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "1.2.3\\nINFO forged line" in line


def test_catalog_table_escapes_control_characters(tmp_path: Path, capsys) -> None:
    from test_db_catalog import series_results

    from db import Recorder, open_catalog

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    engine = open_catalog(url)
    Recorder(engine).record_series_results(
        series_results(1, body_part="CHEST\x1b[2J", model="evil\nINFO forged"))
    engine.dispose()
    assert main(["catalog", "query", "--catalog", url, "--format", "table", "--wide"]) == 0
    table = capsys.readouterr().out  # --wide: every column, whatever the terminal's width
    assert "evil\\nINFO forged" in table and "\x1b" not in table
    assert not any(line.startswith("INFO forged") for line in table.splitlines())
    assert main(["catalog", "query", "--catalog", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # the data itself is kept as it is
    assert {r["model_name"] for r in rows} == {"evil\nINFO forged"}


def _forged_sop_class(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose SOP Class UID holds a newline and a forged log line."""
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = "1.2.3\nINFO forged line"
    ds.save_as(target)
    return target


def _temp(folder: Path, name: str, pid: int, age_s: float) -> Path:
    """A writer's temporary file as ``atomic_path`` names it, last written ``age_s`` ago."""
    path = folder / f".{name}.{pid}-0123456789ab.tmp"
    path.write_bytes(b"half a SEG")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_segment_escapes_log_lines_and_removes_stale_temps(synth_dir: Path,
                                                           tmp_path: Path) -> None:
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    entry = next(g for g in study["gsps"] if g["encoding"] == "line-mm")
    out = tmp_path / "out" / "study"
    out.mkdir(parents=True)
    dead = _dead_pid()
    stale = _temp(out, "killed.dcm", dead, age_s=600)
    live = _temp(out, "writing.dcm", os.getpid(), age_s=600)  # this process is its writer
    just_killed = _temp(out, "fresh.dcm", dead, age_s=0)  # maybe a writer in another container
    old = _temp(out, "ancient.dcm", os.getpid(), age_s=3 * 24 * 3600)
    forged = _forged_sop_class(sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))[0],
                               tmp_path / "forged.dcm")
    result = sam2ct("segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                    str(synth_dir / entry["file"]), str(forged), "--out", str(tmp_path / "out"),
                    "--model", "classical", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert result.returncode == 1, result.stderr  # the forged file failed, the batch went on
    assert "Traceback" not in result.stderr
    assert not any(line.startswith("INFO forged") for line in result.stderr.splitlines())
    warning = next(line for line in result.stderr.splitlines() if "forged" in line)
    assert warning.startswith("WARNING ") and "1.2.3\\nINFO forged line" in warning
    segments = json.loads(result.stdout)["segments"]
    assert [s["status"] for s in segments].count("ok") == 1
    assert not stale.exists() and not old.exists()
    assert live.exists() and just_killed.exists()


def test_remove_stale_temps_of_a_missing_folder_is_nothing(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "never-made") == 0


@pytest.mark.parametrize("text, escaped", [
    ("1.2\nINFO x", "1.2\\nINFO x"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("a\x85b\u2028c\u202ed", "a\\x85b\\u2028c\\u202ed"),
    ("bytes \udcff\x00", "bytes \\udcff\\x00"),
    ("é 5 mm", "é 5 mm"),
])
def test_printable_escapes_what_moves_a_terminal(text: str, escaped: str) -> None:
    assert printable(text) == escaped and printable(escaped) == escaped


def test_printable_cuts_long_text() -> None:
    assert printable("x" * 1000, 20) == "x" * 17 + "..."
