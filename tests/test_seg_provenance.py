"""A synthetic study segmented from every one of its GSPS, as the harvest does: each SEG names its
GSPS and reads back to the annotation of each segment; the SEG series of the study are told
apart; every object passes dciodvfy, and the study folder passes dcentvfy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import dciodvfy_errors

from dicom_io.gsps import read_gsps
from dicom_io.seg import SegmentSpec, read_provenance, read_seg_masks
from dicom_io.volume import Volume, load_series
from flows.segment_series import SeriesRun, read_gsps_files, segment_series
from sam2ct.registry import choose_segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(synth_dir: Path) -> dict:
    return json.loads((synth_dir / "manifest.json").read_text())["studies"][0]


@pytest.fixture(scope="module")
def volume(synth_dir: Path, study: dict) -> Volume:
    return load_series(synth_dir / study["ct_dir"])


@pytest.fixture(scope="module")
def run(synth_dir: Path, study: dict, volume: Volume, tmp_path_factory) -> SeriesRun:
    parsed, failures = read_gsps_files([synth_dir / g["file"] for g in study["gsps"]])
    assert not failures
    out = tmp_path_factory.mktemp("segs")
    return segment_series(volume, parsed, choose_segmenter("classical"), out)


@pytest.fixture(scope="module")
def segs(run: SeriesRun) -> list[Path]:
    paths = sorted({Path(r.segmentation.seg_path) for r in run.results
                    if r.segmentation is not None and r.segmentation.seg_path})
    assert len(paths) >= 8, "most GSPS of a synthetic study should give a SEG"
    return paths


def test_each_seg_reads_back_to_its_gsps_annotations_and_back(run, segs, volume):
    """SEG -> (GSPS, annotation index) -> the annotation read from the GSPS file -> the same
    segment (label, tracking, mask) of the same SEG."""
    files = {p.sop_instance_uid: p.path for p in run.parsed}
    for path in segs:
        seg = pydicom.dcmread(path, stop_before_pixels=True)
        items = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
        masks = read_seg_masks(path, volume)
        for origin in read_provenance(path):
            gsps = pydicom.dcmread(files[origin.gsps_sop_instance_uid], stop_before_pixels=True)
            assert origin.gsps_sop_class_uid == gsps.SOPClassUID
            annotation = read_gsps(files[origin.gsps_sop_instance_uid])[origin.annotation_index]
            spec = SegmentSpec.from_annotation(annotation)
            item = items[origin.segment_number]
            assert (item.SegmentLabel, item.TrackingID, item.TrackingUID) == (
                spec.label, spec.tracking_id, spec.tracking_uid)
            # back: the flow's own record of this annotation names this SEG and segment
            [result] = [r for r in run.results
                        if r.annotation.gsps_sop_instance_uid == annotation.gsps_sop_instance_uid
                        and r.annotation.index == annotation.index]
            assert result.segmentation.seg_path == str(path)
            assert result.segmentation.segment_number == origin.segment_number
            assert int(masks[origin.segment_number].sum()) == result.segmentation.voxels
        # the GSPS is referenced where the standard provides for it
        [source] = seg.SourceInstanceSequence
        listed = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
        assert source.ReferencedSOPInstanceUID in listed
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid


def test_seg_series_of_a_study_are_told_apart(run, segs):
    """Ten GSPS with the same creation time: ten series numbers and descriptions, each naming
    its presentation label; labels say what was drawn, never only the drawing's kind."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in segs]
    numbers = [int(ds.SeriesNumber) for ds in datasets]
    descriptions = [str(ds.SeriesDescription) for ds in datasets]
    print("SEG series:", sorted(zip(numbers, descriptions, strict=True)))
    assert len(set(numbers)) == len(segs) and len(set(descriptions)) == len(segs)
    labels = {p.sop_instance_uid: p.reference.label for p in run.parsed}
    for ds, number, description in zip(datasets, numbers, descriptions, strict=True):
        gsps_uid = ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID
        assert description.startswith(f"Lesions #{number} of {labels[gsps_uid]} ")
        assert ds.DeviceSerialNumber.startswith("classical ") and "none" not in str(
            ds.DeviceSerialNumber)
        for item in ds.SegmentSequence:
            assert item.SegmentLabel.split()[0] not in {"arrow", "line", "circle", "ellipse",
                                                        "bidirectional", "polygon"}, item


def test_every_seg_passes_dciodvfy_and_the_study_dcentvfy(synth_dir, study, segs, tmp_path):
    counts = {path.name: len(dciodvfy_errors(path)) for path in segs}
    print("dciodvfy errors per SEG:", counts)
    assert set(counts.values()) == {0}
    exe = shutil.which("dcentvfy")
    if exe is None:
        pytest.skip("dcentvfy (dicom3tools) is not installed")
    ct = sorted((synth_dir / study["ct_dir"]).glob("*.dcm"))
    gsps = [synth_dir / g["file"] for g in study["gsps"]]
    out = subprocess.run([exe, *map(str, [*ct, *gsps, *segs])], capture_output=True, text=True,
                         timeout=300)
    errors = [line for line in (out.stdout + out.stderr).splitlines()
              if line.startswith("Error")]
    print(f"dcentvfy over {len(ct) + len(gsps) + len(segs)} files: {len(errors)} errors")
    assert errors == []
