"""Automatic quality flags: each fires on a constructed mask that is wrong in its way and stays
quiet on a good one; a segment run stores them in the catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from sam2ct.geometry import measure_mask
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.quality import (
    DEFAULT_THRESHOLDS,
    FlagCode,
    QualityThresholds,
    quality_evidence,
    quality_flags,
)

pytest_plugins = ["flow_fixtures"]

SPACING = (2.0, 0.8, 0.8)
SHAPE = (40, 128, 128)
CENTRE = (20, 64, 64)  # slice, row, column


def ellipsoid(radii_mm: tuple[float, float, float], centre=CENTRE, shape=SHAPE) -> np.ndarray:
    """A boolean ellipsoid of semi-axes ``radii_mm`` (slice, row, column) at ``centre``."""
    z, r, c = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((((z - centre[0]) * SPACING[0] / radii_mm[0]) ** 2
             + ((r - centre[1]) * SPACING[1] / radii_mm[1]) ** 2
             + ((c - centre[2]) * SPACING[2] / radii_mm[2]) ** 2) <= 1.0)


def line(length_mm: float, row: float = CENTRE[1], z: int = CENTRE[0]) -> Prompt:
    """A horizontal line of ``length_mm`` centred on column 64 at ``row``."""
    half = length_mm / 2 / SPACING[2]
    return Prompt(PromptKind.LINE, z, np.array([[64 - half, row], [64 + half, row]]))


def codes(mask: np.ndarray, prompt: Prompt, score: float | None = None) -> set[str]:
    measures = measure_mask(mask, SPACING, mask.astype(np.float32)) if mask.any() else None
    flags = quality_flags(mask, SPACING, prompt, measures, model_score=score)
    assert all(f.reason and f.to_json() == {"code": f.code.value, "reason": f.reason}
               for f in flags)
    return {f.code.value for f in flags}


SPHERE = ellipsoid((10.0, 10.0, 10.0))  # 20 mm across


def test_a_good_mask_raises_no_flag_for_each_prompt_kind() -> None:
    assert codes(SPHERE, line(19.0)) == set()
    bidirectional = Prompt(PromptKind.BIDIRECTIONAL, 20, np.array(
        [[52.0, 64.0], [76.0, 64.0], [64.0, 52.0], [64.0, 76.0]]))
    assert codes(SPHERE, bidirectional) == set()
    tip_on_rim = Prompt(PromptKind.ARROW, 20, np.array([[64.0, 52.0], [64.0, 30.0]]))
    assert codes(SPHERE, tip_on_rim) == set()
    assert codes(SPHERE, line(19.0), score=0.9) == set()


def test_a_mask_far_larger_than_the_drawn_line() -> None:
    big = ellipsoid((20.0, 20.0, 20.0))  # 40 mm across for a 19 mm line: 9x the sphere
    found = codes(big, line(19.0))
    assert {"volume", "diameter"} <= found
    evidence = quality_evidence(big, SPACING, line(19.0), measure_mask(big, SPACING, big * 1.0))
    assert evidence.volume_ratio == pytest.approx(8.8, rel=0.15)


def test_a_mask_beside_the_drawn_line() -> None:
    beside = ellipsoid((10.0, 10.0, 10.0), centre=(20, 64, 64 + 30))  # 24 mm to the right
    assert "line-outside" in codes(beside, line(19.0))


def test_a_mask_not_on_the_drawn_slice() -> None:
    assert "off-slice" in codes(SPHERE, line(19.0, z=38))


def test_an_arrow_whose_tip_is_far_from_the_mask() -> None:
    far = Prompt(PromptKind.ARROW, 20, np.array([[64.0, 25.0], [64.0, 5.0]]))  # 21 mm off
    assert "arrow-tip" in codes(SPHERE, far)


def test_an_arrow_pointing_away_from_the_mask() -> None:
    # tip on the rim, the tail inside the mask: the mask is behind the arrow, not ahead of it
    away = Prompt(PromptKind.ARROW, 20, np.array([[64.0, 52.0], [64.0, 60.0]]))
    assert "arrow-direction" in codes(SPHERE, away)
    # a mask reaching far back beyond the tip, beside the shaft
    behind = ellipsoid((10.0, 10.0, 10.0), centre=(20, 40, 52))
    pointed = Prompt(PromptKind.ARROW, 20, np.array([[64.0, 52.0], [64.0, 40.0]]))
    found = quality_evidence(behind, SPACING, pointed, measure_mask(behind, SPACING, behind * 1.0))
    assert found.behind_share > DEFAULT_THRESHOLDS.max_behind_share
    assert "arrow-direction" in codes(behind, pointed)


def test_a_mask_touching_the_field_of_view() -> None:
    at_edge = ellipsoid((10.0, 10.0, 10.0), centre=(20, 64, 6))
    prompt = Prompt(PromptKind.LINE, 20, np.array([[0.0, 64.0], [18.0, 64.0]]))
    assert "fov-border" in codes(at_edge, prompt)
    first_slice = ellipsoid((10.0, 10.0, 10.0), centre=(2, 64, 64))
    assert "fov-border" in codes(first_slice, line(19.0, z=2))


def test_a_mask_leaking_through_slices_or_spread_flat() -> None:
    tall = ellipsoid((35.0, 10.0, 10.0))  # 70 mm through slices, 20 mm wide
    assert "z-leak" in codes(tall, line(19.0))
    flat = ellipsoid((2.0, 25.0, 25.0))  # 4 mm thick, 50 mm wide
    assert "flat" in codes(flat, line(49.0))


def test_an_irregular_outline_on_the_drawn_slice() -> None:
    cross = np.zeros(SHAPE, dtype=bool)
    cross[14:27, 62:67, 40:89] = True
    cross[14:27, 40:89, 62:67] = True
    assert "irregular" in codes(cross, line(38.0))


def test_a_mask_stopping_inside_homogeneous_tissue() -> None:
    """The tissue around a mask that stops short of the lesion's edge has the mask's density."""
    rng = np.random.default_rng(0)
    image = np.where(SPHERE, 40.0, -800.0) + rng.normal(0.0, 12.0, SHAPE)
    core = ellipsoid((4.0, 4.0, 4.0))  # the middle of the lesion only

    def rim(mask: np.ndarray) -> set[str]:
        measures = measure_mask(mask, SPACING, image)
        return {f.code.value for f in quality_flags(mask, SPACING, line(19.0), measures, image)}

    assert "open-rim" not in rim(SPHERE)
    assert "open-rim" in rim(core)
    evidence = quality_evidence(core, SPACING, line(19.0), measure_mask(core, SPACING, image),
                                image)
    assert evidence.rim_similarity > 0.6  # ~0.8: its band holds 80 % of the same tissue


def test_the_models_own_low_score_and_an_empty_mask() -> None:
    assert codes(SPHERE, line(19.0), score=0.2) == {"model-score"}
    assert codes(np.zeros(SHAPE, dtype=bool), line(19.0)) == {"empty"}


def test_thresholds_decide_where_a_flag_fires() -> None:
    big = ellipsoid((13.0, 13.0, 13.0))  # 2.6x the sphere of a 19 mm line
    measures = measure_mask(big, SPACING, big * 1.0)
    strict = QualityThresholds(volume_ratio=(0.5, 2.0), diameter_ratio=(0.5, 2.0))
    loose = QualityThresholds(volume_ratio=(0.5, 4.0), diameter_ratio=(0.5, 2.0))
    assert [f.code for f in quality_flags(big, SPACING, line(19.0), measures,
                                          thresholds=strict)] == [FlagCode.VOLUME]
    assert quality_flags(big, SPACING, line(19.0), measures, thresholds=loose) == []


# --- a segment run stores its flags -----------------------------------------------------------

def _stretched_line(source: Path, out: Path, factor: float) -> Path:
    """A copy of a line GSPS (new UID) whose line is ``factor`` times as long, same centre."""
    ds = pydicom.dcmread(source)
    for item in ds.GraphicAnnotationSequence:
        for graphic in item.get("GraphicObjectSequence", []):
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
            middle = points.mean(axis=0)
            graphic.GraphicData = [float(v) for v in (middle + factor * (points - middle)).ravel()]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out)
    return out


@pytest.mark.slow  # segments two lesions of a synthetic study (a few seconds) per backend
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_segment_run_stores_its_flags_in_the_catalog(backend: str, synth_dir: Path,
                                                     tmp_path: Path, capsys,
                                                     request: pytest.FixtureRequest) -> None:
    from db import CatalogFilter, make_engine, query_rows
    from flows.cli import main

    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    entry = next(g for g in study["gsps"] if g["encoding"] == "line-mm")
    good = synth_dir / entry["file"]
    long = _stretched_line(good, tmp_path / "stretched.dcm", 3.0)
    code = main(["segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps", str(good),
                 str(long), "--out", str(tmp_path / "out"), "--model", "classical",
                 "--catalog", url])
    segments = json.loads(capsys.readouterr().out)["segments"]
    assert code == 0 and [s["status"] for s in segments] == ["ok", "ok"]
    by_gsps = {s["gsps_file"]: s for s in segments}
    assert isinstance(by_gsps[str(good)]["quality_flags"], list)  # checked
    stretched = by_gsps[str(long)]  # the mask follows the long line on into the liver
    assert "open-rim" in {f["code"] for f in stretched["quality_flags"]}
    assert stretched["flag_count"] == len(stretched["quality_flags"])

    engine = make_engine(url)
    rows = {r.gsps_sop_instance_uid: r for r in query_rows(engine)}
    for segment in segments:
        row = rows[segment["gsps_sop_instance_uid"]]
        assert row.quality_flags == segment["quality_flags"]
        assert row.flag_count == segment["flag_count"]
    flagged = {s["gsps_sop_instance_uid"] for s in segments if s["flag_count"]}
    assert {r.gsps_sop_instance_uid for r in query_rows(engine, CatalogFilter(flagged=True))} \
        == flagged
    assert {r.gsps_sop_instance_uid for r in query_rows(engine, CatalogFilter(flagged=False))} \
        == {s["gsps_sop_instance_uid"] for s in segments} - flagged
    engine.dispose()
