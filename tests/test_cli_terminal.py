"""A friendly terminal: --version, shell completion, help for users, tables that fit, binary formats
only to files, enumerations in any case, one line for a bad date, progress bars on a terminal only.

Commands that must see a terminal run as a subprocess on a pseudo-terminal (``pty``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import pytest

from flows.cli import main
from flows.cli.terminal import shorten, table_text

pytest_plugins = ["flow_fixtures"]

SAM2CT = str(Path(sys.executable).parent / "sam2ct")


def on_terminal(argv: Sequence[str], timeout: float = 300, columns: int = 100,
                **env: str) -> tuple[int, str]:
    """Run ``sam2ct ARGV`` with stdout and stderr on a pseudo-terminal ``columns`` wide; its exit
    status and everything it showed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([SAM2CT, *argv], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**environment, **env}, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def piped(argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``sam2ct ARGV`` with stdout and stderr to pipes."""
    return subprocess.run([SAM2CT, *argv], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# -- version, completion, help --------------------------------------------------------------

def test_version_is_the_installed_distribution(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sam2ct {version('sam2ct-harvest')}"


def test_help_is_written_for_users(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "Mine radiologists' GSPS" in text and "sam2ct demo" in text and "README" in text
    assert "Each sub-command lives" not in text and "register" not in text


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_is_valid_and_knows_the_commands(shell: str, tmp_path: Path) -> None:
    done = piped(["completion", shell.upper()])
    assert done.returncode == 0, done.stderr
    script = done.stdout.decode()
    for command in ("harvest", "catalog", "export", "demo", "segment", "completion"):
        assert command in script
    assert "table csv json parquet" in script  # catalog --format's choices
    path = tmp_path / f"sam2ct.{shell}"
    path.write_text(script)
    checker = "bash" if shell == "bash" else "zsh"
    if shell == "zsh" and not _has(checker):
        pytest.skip("zsh is not installed")
    syntax = subprocess.run([checker, "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_bash_completion_completes_commands_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "sam2ct.bash"
    path.write_bytes(piped(["completion", "bash"]).stdout)
    probe = (f'source {path}\n'
             'COMP_WORDS=(sam2ct cat); COMP_CWORD=1; _shtab_sam2ct; echo "1:${COMPREPLY[*]}"\n'
             'COMP_WORDS=(sam2ct catalog query --status ""); COMP_CWORD=4; _shtab_sam2ct\n'
             'echo "2:${COMPREPLY[*]}"\n')
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout
    assert "1:catalog" in lines and "2:ok failed needs-review" in lines


def test_completion_of_an_unknown_shell_lists_the_shells(capsys) -> None:
    assert main(["completion", "ksh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'ksh' is not one of: bash, zsh" in err


def _has(program: str) -> bool:
    from shutil import which

    return which(program) is not None


# -- tables ---------------------------------------------------------------------------------

def test_shorten_keeps_a_uids_head_and_tail_and_a_paths_end() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890124711"
    assert shorten(uid) == "1.2.826…4711"
    path = shorten("/data/seg/1.2.3/very-long-folder-name/file.dcm")
    assert path == "…ng-folder-name/file.dcm" and len(path) == 24
    assert len(shorten("x" * 60)) == 24 and shorten("short") == "short"
    assert shorten("1.0.2") == "1.0.2"  # a version stays whole


def test_table_text_fits_the_width_and_wide_shows_all() -> None:
    import pandas as pd

    frame = pd.DataFrame({f"column_{i}": [f"1.2.826.0.1.3680043.{i}.99999999", i]
                          for i in range(12)})
    text, hidden = table_text(frame, width=60)
    assert max(map(len, text.splitlines())) <= 60 and hidden
    assert "1.2.826…9999" in text
    wide, none = table_text(frame, wide=True)
    assert none == [] and "column_11" in wide and "1.2.826.0.1.3680043.11.99999999" in wide


# -- catalog query: tables, formats, enumerations, dates -----------------------------------

#: Series numbers long enough to make 30-odd-digit UIDs (test_db_catalog.series_results).
LONG = 123456789012345678901


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A catalog on each backend with two series of long UIDs (line 2+3 mL, arrow 6+7 mL)."""
    from test_db_catalog import series_results

    from db import Recorder, open_catalog

    url = (f"sqlite:///{tmp_path / 'c.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = open_catalog(url)
    recorder = Recorder(engine)
    recorder.record_series_results(series_results(LONG, kind="line"))
    recorder.record_series_results(series_results(LONG + 1, kind="arrow",
                                                  volume=6.0))
    engine.dispose()
    return url


def test_table_fits_a_narrow_terminal_and_wide_shows_everything(catalog: str, capsys,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["catalog", "query", "--catalog", catalog]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 + 4 and max(map(len, lines)) <= 100
    assert "segmentation_id" in lines[0] and "study_date" in lines[0] and "kind" in lines[0]
    assert "left out to fit the terminal" in captured.err and "--wide" in captured.err
    assert main(["catalog", "query", "--catalog", catalog, "--wide"]) == 0
    captured = capsys.readouterr()
    wide = captured.out.splitlines()
    assert max(map(len, wide)) > 200 and "series_path" in wide[0]
    assert f"1.2.826.0.1.{LONG}.1" in captured.out  # whole UIDs
    assert "left out" not in captured.err


def test_a_table_shortens_uids_and_paths(catalog: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["catalog", "query", "--catalog", catalog]) == 0
    out = capsys.readouterr().out
    assert "1.2.826…01.1" in out and f"1.2.826.0.1.{LONG}" not in out
    assert "…" in out and "seg_path" in out


@pytest.mark.parametrize("kind", ["line", "LINE", "Line"])
def test_kind_in_any_case(catalog: str, kind: str, capsys) -> None:
    assert main(["catalog", "query", "--catalog", catalog, "--kind", kind, "--format",
                 "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 2 and all(",line," in row for row in rows)


def test_bad_enumerations_list_the_valid_values(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'never.sqlite'}"
    assert main(["catalog", "query", "--catalog", url, "--kind", "lin"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'lin' is not one of: line, bidirectional, arrow" in err
    assert main(["catalog", "stats", "--catalog", url, "--status", "OK", "--format",
                 "XML"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'XML' is not one of: table, csv, json, parquet" in err
    assert main(["export", "--catalog", url, "--out", str(tmp_path / "x"), "--format",
                 "NIFTI", "--status", "needs_review"]) == 2
    assert "is not one of: ok, failed, needs-review" in capsys.readouterr().err
    assert not (tmp_path / "never.sqlite").exists()


def test_the_parsers_choices_are_the_programs_values() -> None:
    from db.export import ExportFormat
    from db.records import SegStatus
    from dicom_io.gsps.annotation import AnnotationKind
    from flows.cli import catalog, export

    assert export.FORMATS == tuple(f.value for f in ExportFormat)
    assert set(catalog.STATUSES) == {s.value for s in SegStatus} - {"skipped"}
    assert set(catalog.KINDS) == {k.value for k in AnnotationKind} - {"text"}


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_bad_date_is_one_line(flag: str, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'never.sqlite'}"
    assert main(["catalog", "query", "--catalog", url, flag, "2026-13-45"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{flag}: 2026-13-45 is not a date (YYYY-MM-DD)" in err and "fromisoformat" not in err


def test_parquet_is_refused_on_a_terminal_and_written_to_a_file_or_pipe(tmp_path: Path) -> None:
    import io

    import pandas as pd
    from test_db_catalog import series_results

    from db import Recorder, open_catalog

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    engine = open_catalog(url)
    Recorder(engine).record_series_results(series_results(1))
    engine.dispose()
    code, shown = on_terminal(["catalog", "query", "--catalog", url, "--format", "PARQUET"])
    assert code == 2 and shown.strip().count("\n") == 0, shown
    assert "parquet is binary and stdout is a terminal: give --out FILE" in shown
    assert "PAR1" not in shown
    out = tmp_path / "rows.parquet"
    assert main(["catalog", "query", "--catalog", url, "--format", "parquet", "--out",
                 str(out)]) == 0
    assert len(pd.read_parquet(out)) == 2
    done = piped(["catalog", "query", "--catalog", url, "--format", "parquet"])
    assert done.returncode == 0 and len(pd.read_parquet(io.BytesIO(done.stdout))) == 2


# -- progress -------------------------------------------------------------------------------

def test_a_flows_progress_moves_the_bar_and_is_no_log_line(capsys) -> None:
    import logging

    from flows.artifacts import PROGRESS_LOGGER
    from flows.cli.terminal import follow_flow

    with follow_flow("harvest", show=True):
        logging.getLogger(PROGRESS_LOGGER).debug("3 GSPS found, 2 to do", extra={"percent": 10.0})
        logging.getLogger(PROGRESS_LOGGER).debug("done", extra={"percent": 100.0})
    err = capsys.readouterr().err
    assert "harvest: starting   0%" in err and "harvest: done 100%" in err
    assert "DEBUG" not in err
    with follow_flow("harvest", show=False):
        logging.getLogger(PROGRESS_LOGGER).debug("3 GSPS found", extra={"percent": 10.0})
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_segment_shows_progress_on_a_terminal_only(synth_dir: Path, tmp_path: Path) -> None:
    import json

    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    gsps = [str(synth_dir / g["file"]) for g in study["gsps"][:2]]
    argv = ["segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps", *gsps,
            "--model", "classical", "--no-catalog"]
    code, shown = on_terminal([*argv, "--out", str(tmp_path / "tty")])
    assert code == 0, shown
    assert "reading the series [" in shown and "loading the model [" in shown
    assert "segment: 100%" in shown and "2/2" in shown and '"segments"' in shown
    done = piped([*argv, "--out", str(tmp_path / "pipe")])
    assert done.returncode == 0, done.stderr
    assert b"%|" not in done.stderr and b"reading the series" not in done.stderr
    assert len(json.loads(done.stdout)["segments"]) >= 2


def test_no_progress_turns_the_bars_off(capsys) -> None:
    import argparse

    from flows.cli.terminal import progress, shows_progress

    assert not shows_progress(argparse.Namespace(no_progress=True))
    assert not shows_progress(argparse.Namespace())  # pytest's stderr is no terminal
    with progress("export", total=3) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
