"""`sam2ct segment` end to end on a synthetic study: SEGs valid, faithful, idempotent; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import dciodvfy_errors

from db import make_engine
from db.queries import failures_by_stage, query_rows, table_counts
from dicom_io.nifti import read_nifti
from dicom_io.seg import read_seg_masks
from dicom_io.volume import load_series
from flows.cli import main

pytestmark = pytest.mark.slow


def _study(synth_dir: Path) -> dict:
    return json.loads((synth_dir / "manifest.json").read_text())["studies"][0]


def _catalog(out: Path) -> str:
    return f"sqlite:///{out / 'catalog.sqlite'}"


def _segment(synth_dir: Path, gsps: list[Path], out: Path, capsys) -> tuple[int, dict]:
    study = _study(synth_dir)
    code = main(["segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                 *map(str, gsps), "--out", str(out), "--model", "classical",
                 "--catalog", _catalog(out)])
    return code, json.loads(capsys.readouterr().out)


def _by_encoding(synth_dir: Path, encoding: str) -> dict:
    return next(g for g in _study(synth_dir)["gsps"] if g["encoding"] == encoding)


def test_line_gsps_becomes_a_valid_seg_matching_the_truth(synth_dir, tmp_path, capsys):
    entry = _by_encoding(synth_dir, "line-mm")
    code, doc = _segment(synth_dir, [synth_dir / entry["file"]], tmp_path, capsys)
    assert code == 0
    [segment] = doc["segments"]
    assert segment["status"] == "ok" and segment["kind"] == "line"
    assert segment["volume_ml"] > 0 and segment["long_axis_mm"] > 0
    seg_path = Path(segment["seg_path"])
    assert dciodvfy_errors(seg_path) == []
    assert Path(segment["preview_path"]).stat().st_size > 1000
    volume = load_series(synth_dir / _study(synth_dir)["ct_dir"])
    mask = read_seg_masks(seg_path, volume)[1]
    assert int(mask.sum()) == segment["voxels"]
    lesion = next(les for les in _study(synth_dir)["lesions"] if les["id"] == entry["lesion"])
    truth = read_nifti(synth_dir / lesion["truth"])[0].astype(bool)
    dice = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.6, dice
    [row] = query_rows(make_engine(_catalog(tmp_path)))
    assert row.seg_sop_instance_uid == seg_path.stem
    assert row.volume_ml == pytest.approx(segment["volume_ml"])
    assert 0 < segment["short_axis_mm"] <= segment["long_axis_mm"]


def test_a_sam2ct_checkpoint_writes_valid_segs(synth_dir, tmp_path, capsys):
    """Published conventions, the deterministic conformance weights (their masks are not empty):
    every SEG and the algorithm it names pass dciodvfy and read back on the series."""
    import torch
    from conformance_cases import parity_weights
    from conftest import shared

    from sam2ct.model import SAM2CTConfig, build_sam2ct, save_checkpoint

    weights = parity_weights(shared("../tools"))
    config = SAM2CTConfig(image_size=128)
    model = build_sam2ct(config)
    model.load_state_dict(weights.fill(model.state_dict()))
    checkpoint = save_checkpoint(tmp_path / "sam2ct.pt", model, config)
    study = _study(synth_dir)
    gsps = [synth_dir / g["file"] for g in study["gsps"][:3]]
    torch.set_num_threads(1)
    code = main(["segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                 *map(str, gsps), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--device", "cpu", "--catalog", _catalog(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    ok = [s for s in doc["segments"] if s["status"] == "ok"]
    assert ok and {s["seg_path"] for s in ok}
    volume = load_series(synth_dir / study["ct_dir"])
    for seg_path in {Path(s["seg_path"]) for s in ok}:
        assert dciodvfy_errors(seg_path) == []
        assert all(m.shape == volume.array.shape and m.any()
                   for m in read_seg_masks(seg_path, volume).values())
    assert {row.model_name for row in query_rows(make_engine(_catalog(tmp_path)))} == {"sam2ct"}


def test_rerun_writes_the_same_files_and_adds_no_rows(synth_dir, tmp_path, capsys):
    gsps = [synth_dir / g["file"] for g in _study(synth_dir)["gsps"][:3]]
    _, first = _segment(synth_dir, gsps, tmp_path, capsys)
    files_before = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    rows_before = table_counts(make_engine(_catalog(tmp_path)))
    _, second = _segment(synth_dir, gsps, tmp_path, capsys)
    files_after = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files_before == files_after
    assert table_counts(make_engine(_catalog(tmp_path))) == rows_before
    ok = [s for s in first["segments"] if s["status"] == "ok"]
    assert rows_before["segmentations"] == len(ok) > 0
    assert rows_before["presentation_states"] == 3
    assert [s["seg_sop_instance_uid"] for s in first["segments"]] == [
        s["seg_sop_instance_uid"] for s in second["segments"]]


def test_a_bad_gsps_is_recorded_and_the_batch_goes_on(synth_dir, tmp_path, capsys):
    study = _study(synth_dir)
    not_a_gsps = sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))[0]
    good = synth_dir / _by_encoding(synth_dir, "agfa-arrow")["file"]
    code, doc = _segment(synth_dir, [not_a_gsps, good], tmp_path, capsys)
    assert code == 1
    statuses = [s["status"] for s in doc["segments"]]
    assert statuses.count("failed") == 1 and statuses.count("ok") == 1
    failed = next(s for s in doc["segments"] if s["status"] == "failed")
    assert not_a_gsps.name in failed["reason"] and "presentation state" in failed["reason"]
    assert failures_by_stage(make_engine(_catalog(tmp_path))) == {"parse": 1}
    assert "SYNTH" not in json.dumps(doc)  # no patient names in output


def test_missing_series_is_one_clear_error(tmp_path, capsys):
    code = main(["segment", "--series", str(tmp_path / "nope"), "--gsps", str(tmp_path / "x.dcm"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
