"""A synthetic study with two CT series and one GSPS drawn on both (test data for the flows).

The second series is a copy of the first under new UIDs (a re-reconstruction, as scanners make);
the shared GSPS holds the line of one synthetic GSPS on series 1 and the bidirectional of another
re-pointed at the same slice of series 2, with both series in its Referenced Series Sequence.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

STUDY_DATE = dt.date(2026, 2, 2)  # outside the windows of the other flow tests


def _copy_series(ct_dir: Path, out: Path, series_uid: str) -> dict[str, str]:
    """Copy a CT series under ``series_uid`` with new SOP UIDs; return old -> new SOP UID."""
    out.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for path in sorted(ct_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        new = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "copy"])
        mapping[str(ds.SOPInstanceUID)] = new
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(ds.SeriesNumber) + 100
        ds.save_as(out / path.name, enforce_file_format=True)
    return mapping


def _shared_gsps(first: Dataset, second: Dataset, series2: str,
                 mapping: dict[str, str]) -> Dataset:
    """``first``'s drawings on series 1 plus ``second``'s re-pointed at series 2."""
    shared = copy.deepcopy(first)
    shared.SOPInstanceUID = shared.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[first.SOPInstanceUID, second.SOPInstanceUID, "shared"])
    shared.InstanceNumber = 99
    refs = Sequence()
    for item in copy.deepcopy(second.GraphicAnnotationSequence):
        for ref in item.ReferencedImageSequence:
            ref.ReferencedSOPInstanceUID = mapping[str(ref.ReferencedSOPInstanceUID)]
            refs.append(copy.deepcopy(ref))
        shared.GraphicAnnotationSequence.append(item)
    series = Dataset()
    series.ReferencedImageSequence = refs
    series.SeriesInstanceUID = series2
    shared.ReferencedSeriesSequence.append(series)
    layers = {str(x.GraphicLayer) for x in shared.GraphicLayerSequence}
    for layer in second.get("GraphicLayerSequence", []):
        if str(layer.GraphicLayer) not in layers:
            shared.GraphicLayerSequence.append(copy.deepcopy(layer))
    return shared


def make_two_series_study(out: Path) -> dict:
    """Write the study under ``out``; return what the tests check against.

    Keys: ``study_instance_uid``, ``series`` (the two series UIDs), ``files`` (every file to put
    on the PACS), ``shared_gsps`` (path), ``shared_uid``, ``on_series`` (series UID -> number of
    annotations the shared GSPS draws on it), ``study_date``.
    """
    from dicom_io.synth import make_studies
    from flows.segment_series import parse_gsps

    manifest = json.loads(make_studies(out, studies=1, seed=23, size=96, slices=16,
                                       start_date=STUDY_DATE).read_text())
    study = manifest["studies"][0]
    series1 = study["series_instance_uid"]
    series2 = generate_uid(entropy_srcs=[series1, "copy"])
    mapping = _copy_series(out / study["ct_dir"], out / study["name"] / "ct2", series2)
    by_encoding = {Path(g["file"]).stem.rsplit("-", 1)[0]: out / g["file"] for g in study["gsps"]}
    first, second = by_encoding["line-mm"], by_encoding["bidirectional"]
    shared = _shared_gsps(pydicom.dcmread(first), pydicom.dcmread(second), series2, mapping)
    path = out / study["name"] / "shared-gsps.dcm"
    shared.save_as(path, enforce_file_format=True)
    ct = sorted((out / study["ct_dir"]).glob("*.dcm")) + sorted(
        (out / study["name"] / "ct2").glob("*.dcm"))
    return {"study_instance_uid": study["study_instance_uid"], "series": (series1, series2),
            "files": [*ct, path], "shared_gsps": path, "shared_uid": str(shared.SOPInstanceUID),
            "on_series": {series1: len(parse_gsps(first).annotations),
                          series2: len(parse_gsps(second).annotations)},
            "study_date": STUDY_DATE}
