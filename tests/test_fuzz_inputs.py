"""Fuzz: seeded mutations of real and synthetic GSPS and CT (tests/fuzz_inputs.py).

Whatever a file holds, reading it ends in one of: a result whose JSON is valid (no NaN or
Infinity), a recorded skip, or one named ``DicomInputError``; never another exception, never
a hang. For the command line: exit 0 with valid JSON, or a non-zero exit with one stderr line.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared
from fuzz_inputs import Case, cases

from dicom_io.errors import DicomInputError

#: A case slower than this is counted as a hang (the slowest legitimate ones take ~5 s here).
HANG_SECONDS = 30.0


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from dicom_io.synth import make_studies

    root = tmp_path_factory.mktemp("fuzz-study")
    make_studies(root, studies=1, seed=11, size=96, slices=16)
    return root / "study-001"


def _gsps_sources(study: Path) -> list[Path]:
    """Every synthetic encoding, and the real GSPS of ../shared/data when it is there."""
    sources = sorted((study / "gsps").glob("*.dcm"))
    real = shared("gsps") if Path(shared("gsps")).is_dir() else None
    if real is not None:
        sources += sorted(p for p in Path(real).rglob("*.dcm")
                          if p.name.lower().endswith(".pr.dcm") or p.name.startswith(("PR", "GSPS")))
    return sources


def _gsps_outcome(case: Case, volume) -> str:
    """How reading one mutated GSPS ended (library, then command line)."""
    from dicom_io.gsps import locate, read_target
    from flows.cli import main
    from flows.segment_series import parse_gsps, prompt_of

    for read in (lambda: read_target(case.path),
                 lambda: [prompt_of(locate(a, volume)) for a in parse_gsps(case.path).annotations]):
        try:
            read()
        except DicomInputError:
            pass  # a named input error: what a bad file should give
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["gsps", "inspect", str(case.path), "--json"])
    if rc == 0:
        _strict_json(out.getvalue())
        return "json"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), (case, err.getvalue()[-500:])
    return "clean error"


def test_mutated_gsps_never_crash_hang_or_write_invalid_json(study: Path, tmp_path: Path) -> None:
    from dicom_io.volume import load_series

    volume = load_series(study / "ct")
    tally: Counter[str] = Counter()
    slowest = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about each invalid value it writes
        made = cases(_gsps_sources(study), tmp_path / "gsps", count=220, seed=20261207)
        for case in made:
            started = time.monotonic()
            tally[_gsps_outcome(case, volume)] += 1
            slowest = max(slowest, time.monotonic() - started)
    print(f"GSPS fuzz: {len(made)} cases, {dict(tally)}, slowest {slowest:.1f} s")
    assert sum(tally.values()) == len(made) == 220
    assert tally["json"] > 0 and tally["clean error"] > 0  # the mutations reach both ends
    assert slowest < HANG_SECONDS


def _mutated_series(study: Path, case: Case, out: Path) -> Path:
    """The study's CT series with one slice replaced by its mutated copy."""
    shutil.copytree(study / "ct", out)
    shutil.copyfile(case.path, out / case.source.name)
    case.path.unlink()
    return out


def _ct_outcome(study: Path, case: Case, series: Path, gsps: list[Path]) -> str:
    """How loading (and, when it loads, segmenting) a mutated series ended."""
    import numpy as np

    from dicom_io.volume import load_series
    from flows.segment_series import read_gsps_files, segment_series
    from sam2ct.registry import choose_segmenter

    try:
        volume = load_series(series)
    except DicomInputError:
        return "refused"
    assert np.isfinite(volume.array).all() and np.isfinite(volume.affine).all()
    parsed, _ = read_gsps_files(gsps)
    run = segment_series(volume, parsed, choose_segmenter("classical"), series.parent / "seg")
    _strict_json(json.dumps(run.to_json()))
    return "segmented" if run.results else "loaded"


def test_mutated_ct_is_refused_by_name_or_segments_to_finite_results(study: Path,
                                                                      tmp_path: Path) -> None:
    slices = sorted((study / "ct").glob("*.dcm"))
    gsps = [study / "gsps" / "line-mm-L1.dcm"]
    tally: Counter[str] = Counter()
    slowest = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = cases(slices, tmp_path / "ct-cases", count=36, seed=7)
        for n, case in enumerate(made):
            series = _mutated_series(study, case, tmp_path / f"series-{n:03d}" / "ct")
            started = time.monotonic()
            tally[_ct_outcome(study, case, series, gsps)] += 1
            slowest = max(slowest, time.monotonic() - started)
    print(f"CT fuzz: {len(made)} cases, {dict(tally)}, slowest {slowest:.1f} s")
    assert sum(tally.values()) == 36 and tally["refused"] > 0 and tally["segmented"] > 0
    assert slowest < HANG_SECONDS


@pytest.mark.parametrize(("keyword", "value"), [
    ("RescaleSlope", "nan"), ("RescaleSlope", "inf"), ("RescaleIntercept", "1e308"),
    ("ImagePositionPatient", ["0", "0", "1e300"]), ("PixelSpacing", ["0", "0.5"]),
])
def test_absurd_ct_values_are_refused_naming_the_attribute(study: Path, tmp_path: Path,
                                                           keyword: str, value) -> None:
    import pydicom

    from dicom_io.volume import load_series

    series = tmp_path / "ct"
    shutil.copytree(study / "ct", series)
    victim = sorted(series.glob("*.dcm"))[5]
    ds = pydicom.dcmread(victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
        ds.save_as(victim)
    with pytest.raises(DicomInputError, match=keyword):
        load_series(series)


def test_a_slice_of_another_study_or_a_reused_uid_is_refused(study: Path, tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    from dicom_io.volume import load_series

    for name, change, message in (
            ("foreign", lambda ds, _: setattr(ds, "StudyInstanceUID", generate_uid()),
             "belongs to another study"),
            ("reused", lambda ds, other: setattr(ds, "SOPInstanceUID", other.SOPInstanceUID),
             "names two images at different positions")):
        series = tmp_path / name
        shutil.copytree(study / "ct", series)
        paths = sorted(series.glob("*.dcm"))
        ds, other = pydicom.dcmread(paths[4]), pydicom.dcmread(paths[9])
        change(ds, other)
        ds.save_as(paths[4])
        with pytest.raises(DicomInputError, match=message):
            load_series(series)
