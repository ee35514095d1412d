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
