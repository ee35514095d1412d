"""A GSPS drawn on several CT series: one job per series, each annotation in exactly one job."""

from __future__ import annotations

import pydicom
import pytest
from multi_series import make_two_series_study

from dicom_io.gsps import drawn_series
from flows.segment_jobs import SeriesJob
from flows.segment_series import parse_gsps


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return make_two_series_study(tmp_path_factory.mktemp("two-series"))


def _job(study: dict, series: str, drawn: list[str]) -> SeriesJob:
    name = str(study["shared_gsps"])
    return SeriesJob(study_instance_uid=study["study_instance_uid"], series_instance_uid=series,
                     series_dir="", gsps_files=[name], gsps_series={name: drawn})


def test_shared_gsps_is_split_between_its_series_without_loss_or_overlap(study):
    first, second = study["series"]
    ds = pydicom.dcmread(study["shared_gsps"], stop_before_pixels=True)
    assert drawn_series(ds) == (first, second)
    parsed = parse_gsps(study["shared_gsps"])
    name = str(study["shared_gsps"])
    own = {s: _job(study, s, [first, second]).own_annotations(parsed, name).annotations
           for s in (first, second)}
    assert {s: len(a) for s, a in own.items()} == study["on_series"]
    indexes = [a.index for anns in own.values() for a in anns]
    assert sorted(indexes) == [a.index for a in parsed.annotations]  # all, none twice
    assert all(a.referenced_series_instance_uid == s for s, anns in own.items() for a in anns)
    # a one-series GSPS (no gsps_series entry) keeps every annotation, as before
    alone = SeriesJob(study_instance_uid="1.2", series_instance_uid=first, series_dir="",
                      gsps_files=[name])
    assert alone.own_annotations(parsed, name) == parsed


def test_annotations_on_no_drawn_series_go_to_the_first_series_only(study):
    first, second = study["series"]
    ds = pydicom.dcmread(study["shared_gsps"])
    stray = ds.GraphicAnnotationSequence[0]
    stray.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"  # listed nowhere
    path = study["shared_gsps"].with_name("stray.dcm")
    ds.save_as(path, enforce_file_format=True)
    parsed = parse_gsps(path)
    lost = [a for a in parsed.annotations if a.referenced_series_instance_uid is None]
    assert lost, "the edited item should reference no listed image"
    jobs = {s: _job(study, s, [first, second]) for s in (first, second)}
    own = {s: j.own_annotations(parsed, str(study["shared_gsps"])) for s, j in jobs.items()}
    first_ids = {a.index for a in own[first].annotations}
    assert {a.index for a in lost} <= first_ids
    assert not first_ids & {a.index for a in own[second].annotations}
