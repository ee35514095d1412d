"""`sam2ct pacs echo|find|retrieve|store` through flows.cli.main against a real Orthanc."""

from __future__ import annotations

import json

import pytest
from conftest import free_port

from flows.cli import main

pytestmark = pytest.mark.slow
pytest_plugins = ["pacs_fixtures"]  # fixtures: corpus, local, orthanc


@pytest.fixture
def env(monkeypatch, orthanc, local, tmp_path):
    monkeypatch.chdir(tmp_path)  # no sam2ct.toml around
    monkeypatch.setenv("SAM2CT_PACS", orthanc.address)
    monkeypatch.setenv("SAM2CT_AE_TITLE", local.ae_title)
    monkeypatch.setenv("SAM2CT_STORE_PORT", str(local.store_port))
    return orthanc


def test_echo(env, capsys) -> None:
    assert main(["pacs", "echo"]) == 0
    assert "ok" in capsys.readouterr().out


def test_echo_pacs_down_is_one_clear_line(env, capsys) -> None:
    assert main(["pacs", "echo", "--pacs", f"GONE@127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sam2ct pacs: error: PACS GONE@127.0.0.1:")
    assert "cannot connect" in err[-1]


def test_bad_address(env, capsys) -> None:
    assert main(["pacs", "echo", "--pacs", "nonsense"]) == 2
    assert "Invalid PACS address 'nonsense'" in capsys.readouterr().err


def test_find_study_window_json(env, corpus, capsys) -> None:
    assert main(["pacs", "find", "--level", "study", "--date", "20260101-20260131",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["StudyInstanceUID"] for r in rows} == {
        corpus.a.study_uid, corpus.b.study_uid, corpus.c.study_uid}


def test_find_series_and_image(env, corpus, capsys) -> None:
    assert main(["pacs", "find", "--level", "series", "--modality", "PR", "--json",
                 f"StudyInstanceUID={corpus.b.study_uid}"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["Modality"] for r in rows] == ["PR"]
    assert main(["pacs", "find", "--level", "image", f"StudyInstanceUID={corpus.b.study_uid}",
                 f"SeriesInstanceUID={rows[0]['SeriesInstanceUID']}"]) == 0
    out = capsys.readouterr().out
    assert all(uid in out for uid in corpus.b.gsps_uids)
    assert main(["pacs", "find", "BROKEN"]) == 2


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve(env, corpus, tmp_path, capsys, method) -> None:
    out = tmp_path / "staging"
    assert main(["pacs", "retrieve", "--study", corpus.a.study_uid, "--series",
                 corpus.a.ct_series_uid, "--out", str(out), "--method", method, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["expected"], report["received"], report["missing"]) == (3, 3, [])
    assert len(list(out.rglob("*.dcm"))) == 3


def test_retrieve_unknown_study_fails(env, tmp_path, capsys) -> None:
    assert main(["pacs", "retrieve", "--study", "1.2.3.4", "--out", str(tmp_path),
                 "--associations", "0"]) == 2
    assert "argument --associations: 0 is out of range" in capsys.readouterr().err
    assert main(["pacs", "retrieve", "--study", "1.2.3.4", "--out", str(tmp_path)]) == 2
    assert "no instances for study 1.2.3.4" in capsys.readouterr().err


def test_store(env, corpus, tmp_path, capsys) -> None:
    assert main(["pacs", "store", *map(str, corpus.d.files)]) == 0
    assert f"{len(corpus.d.files)} stored" in capsys.readouterr().out
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    assert main(["pacs", "store", str(junk)]) == 2
    assert "refused" in capsys.readouterr().err
