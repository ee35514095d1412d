"""`sam2ct evaluate` end to end: LUNG1 RTSTRUCT truth, synthetic NIfTI truth, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main


@pytest.mark.slow
def test_lung1_line_json(lung1_001: Path, capsys):
    code = main(["evaluate", "--series", str(lung1_001 / "ct"), "--truth",
                 str(lung1_001 / "rtstruct.dcm"), "--roi", "GTV-1", "--prompt", "line",
                 "--model", "classical", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)  # one JSON document, nothing else on stdout
    assert doc["dice"] >= 0.75
    assert doc["model"] == "classical" and doc["checkpoint_sha256"] is None
    for key in ("hd95_mm", "volume_error_pct", "long_axis_error_mm", "seconds"):
        assert isinstance(doc[key], float)
    assert doc["prompt"]["kind"] == "line" and len(doc["prompt"]["points"]) == 2
    assert 140 < doc["truth_volume_ml"] < 170
    assert abs(doc["truth_long_axis_mm"] - 94.2) < 1.0


def test_unknown_roi_is_one_error_line(lung1_001: Path, capsys):
    code = main(["evaluate", "--series", str(lung1_001 / "ct"), "--truth",
                 str(lung1_001 / "rtstruct.dcm"), "--roi", "GTV-9", "--model", "classical"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "GTV-9" in lines[0] and "GTV-1" in lines[0]
    assert "Traceback" not in err


def test_missing_truth_file(lung1_001: Path, tmp_path: Path, capsys):
    code = main(["evaluate", "--series", str(lung1_001 / "ct"), "--truth",
                 str(tmp_path / "none.nii.gz"), "--model", "classical"])
    assert code == 2
    assert "none.nii.gz" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["arrow", "bidirectional"])
def test_synthetic_nifti_truth(kind, synth_dir: Path, capsys):
    manifest = json.loads((synth_dir / "manifest.json").read_text())
    study = manifest["studies"][0]
    lesion = study["lesions"][0]
    code = main(["evaluate", "--series", str(synth_dir / study["ct_dir"]), "--truth",
                 str(synth_dir / lesion["truth"]), "--prompt", kind, "--seed", "1",
                 "--model", "classical", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["prompt"]["kind"] == kind
    assert doc["dice"] > 0.5
    assert doc["truth_volume_ml"] == pytest.approx(lesion["volume_ml"], rel=0.05)


@pytest.mark.slow
def test_text_output(synth_dir: Path, capsys):
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    code = main(["evaluate", "--series", str(synth_dir / study["ct_dir"]), "--truth",
                 str(synth_dir / study["lesions"][0]["truth"]), "--model", "classical"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dice" in out and "hd95_mm" in out and "classical" in out
