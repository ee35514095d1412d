"""Files written whole or not at all (dicom_io.files, sam2ct.files)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dicom_io.files import TEMP_GLOB, atomic_path, write_atomic, write_text_atomic
from sam2ct.files import replaced_on_success


def test_write_atomic_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.dcm"
    write_atomic(target, b"da", b"ta")
    assert target.read_bytes() == b"data"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_atomic(blocker / "c.dcm", b"data")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.dcm", "file"]


@pytest.mark.parametrize("context", [atomic_path, replaced_on_success])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                   context) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), context(target) as tmp:
        tmp.write_text("half")
        assert list(tmp_path.glob(TEMP_GLOB)) == [tmp]  # hidden, and what a cleaner looks for
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    with context(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_the_temporary_name_keeps_a_suffix_and_the_file_the_usual_mode(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "x.nii.gz", suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".tmp.nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"\x1f\x8b")
    written = write_text_atomic(tmp_path / "d.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")  # the mode a plain write gives (umask), not a private 0600
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
