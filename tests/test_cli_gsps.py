"""`sam2ct gsps inspect` through flows.cli.main, on the real third-party presentation states."""

from __future__ import annotations

import json

import pytest
from conftest import shared

from flows.cli import main


def test_inspect_json_is_one_document_per_file_list(capsys: pytest.CaptureFixture[str]) -> None:
    agfa = shared("gsps/agfa-impax")
    meddream = shared("gsps/meddream")
    rc = main(["gsps", "inspect", str(agfa / "GSPS_PS.dcm"), str(agfa / "GSPS.dcm"),
               str(meddream / "PR000000.dcm"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)  # exactly one JSON document
    assert [len(f["annotations"]) for f in doc] == [1, 0, 1]
    line = doc[0]["annotations"][0]
    assert line["kind"] == "line" and line["length_mm"] == pytest.approx(11.1, abs=0.3)
    assert line["gsps_sop_instance_uid"] == doc[0]["gsps_sop_instance_uid"]
    assert line["referenced_sop_instance_uid"].endswith("909703912045")
    assert len(line["points"]) == 2 and line["skip_reason"] is None
    assert {"referenced_frame", "text", "layer"} <= set(line)
    assert doc[1]["gsps_sop_instance_uid"].startswith("1.2.40.0.13.1.")
    assert doc[2]["annotations"][0]["kind"] == "ellipse"


def test_inspect_display_only_pr_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["gsps", "inspect", str(shared("gsps/agfa-impax/GSPS.dcm"))])
    assert rc == 0
    assert "0 annotation(s)" in capsys.readouterr().out


def test_inspect_table_with_image(capsys: pytest.CaptureFixture[str]) -> None:
    folder = shared("gsps/clearcanvas")
    rc = main(["gsps", "inspect", str(folder / "real01.pr.dcm"),
               "--image", str(folder / "real01.dcm")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "polygon" in out and "[62 points]" in out and "SKIPPED" not in out


def test_inspect_image_not_given_is_a_skip(capsys: pytest.CaptureFixture[str]) -> None:
    folder = shared("gsps/clearcanvas")
    rc = main(["gsps", "inspect", str(folder / "real01.pr.dcm"),
               "--image", str(folder / "real02.dcm"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert "missing" in doc[0]["annotations"][0]["skip_reason"]


def test_inspect_non_pr_file_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    image = shared("gsps/meddream/CR000000.dcm")
    rc = main(["gsps", "inspect", str(image)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1
    assert str(image) in err[0] and "Computed Radiography Image Storage" in err[0]
    assert "not a presentation state" in err[0]


def test_inspect_mixed_files_reports_good_ones_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pr = shared("gsps/meddream/PR000000.dcm")
    image = shared("gsps/meddream/CR000000.dcm")
    rc = main(["gsps", "inspect", str(pr), str(image), "--json"])
    captured = capsys.readouterr()
    assert rc == 2
    assert len(json.loads(captured.out)) == 1
    assert len(captured.err.strip().splitlines()) == 1


def test_inspect_missing_file_fails(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    missing = tmp_path / "nope.dcm"
    rc = main(["gsps", "inspect", str(missing)])
    err = capsys.readouterr().err
    assert rc != 0 and str(missing) in err
