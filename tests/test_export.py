"""Dataset export from a catalog of real SEG files: nnU-Net, NIfTI, MONAI, resumable, splits."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from db import CatalogFilter, Recorder, open_catalog
from db.export import ExportFormat, export_dataset
from db.export.manifest import Manifest
from db.export.splits import assign_splits, parse_fractions
from db.records import (
    AnnotationRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)
from dicom_io.nifti import read_nifti
from dicom_io.seg import AlgorithmSpec, SegmentSpec, write_seg
from dicom_io.volume import Volume, load_series

ALGORITHM = AlgorithmSpec("classical", "1.0.0")


def catalogue_series(rec: Recorder, volume: Volume, masks: list[np.ndarray], gsps_uids: list[str],
                     seg_dir: Path, series_dir: Path, kind: str = "line") -> Path:
    """Write one SEG (a segment per mask, each from annotation 0 of its GSPS) and record it."""
    specs = [SegmentSpec.for_annotation(uid, 0, kind, f"{kind} lesion") for uid in gsps_uids]
    seg_path = write_seg(volume, masks, specs, ALGORITHM, seg_dir)
    header = pydicom.dcmread(volume.slices[0].path, stop_before_pixels=True)
    study_date = date.fromisoformat(str(header.StudyDate)[:4] + "-" + str(header.StudyDate)[4:6]
                                    + "-" + str(header.StudyDate)[6:8])
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    rec.record_series_results(SeriesResults(
        StudyRecord(volume.study_instance_uid, str(header.PatientID), study_date),
        SeriesRecord(volume.series_instance_uid, volume.study_instance_uid, "CT",
                     str(header.get("BodyPartExamined", "")) or None, len(volume.slices),
                     volume.spacing, str(header.get("Manufacturer", "")), str(series_dir)),
        tuple(PresentationStateRecord(uid, volume.series_instance_uid) for uid in gsps_uids),
        tuple(AnnotationRecord(uid, 0, kind) for uid in gsps_uids),
        tuple(SegmentationRecord(gsps_sop_instance_uid=uid, annotation_index=0,
                                 model_name=ALGORITHM.name, model_version=ALGORITHM.version,
                                 seg_sop_instance_uid=seg_path.stem, segment_number=i + 1,
                                 seg_path=str(seg_path), voxels=int(m.sum()),
                                 volume_ml=float(m.sum()) * vox_ml)
              for i, (uid, m) in enumerate(zip(gsps_uids, masks, strict=True)))))
    return seg_path


@pytest.fixture(scope="module")
def synth_catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four small synthetic studies (four patients), their truth masks as SEGs, in a catalog."""
    from dicom_io.synth import make_studies

    root = tmp_path_factory.mktemp("synth-export")
    manifest = json.loads(make_studies(root / "studies", studies=4, seed=11, size=80,
                                       slices=32).read_text())
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    engine = open_catalog(url)
    rec = Recorder(engine)
    truth: dict[str, np.ndarray] = {}
    volumes: dict[str, Volume] = {}
    for study in manifest["studies"]:
        ct_dir = root / "studies" / study["ct_dir"]
        volume = load_series(ct_dir)
        masks = [read_nifti(root / "studies" / lesion["truth"])[0].astype(bool)
                 for lesion in study["lesions"]]
        gsps = {g["lesion"]: g["sop_instance_uid"] for g in study["gsps"]}
        uids = [gsps[lesion["id"]] for lesion in study["lesions"]]
        catalogue_series(rec, volume, masks, uids, root / "segs", ct_dir)
        truth[volume.series_instance_uid] = np.any(masks, axis=0)
        volumes[volume.series_instance_uid] = volume
    engine.dispose()
    return {"url": url, "truth": truth, "volumes": volumes, "root": root}


def _engine(synth_catalog: dict):
    return open_catalog(synth_catalog["url"], migrate=False)


@pytest.mark.slow  # shares an ~10 s module fixture (synthetic studies + SEGs)
def test_nnunet_dataset_json_matches_the_files(synth_catalog: dict, tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    report = export_dataset(engine, tmp_path, "nnunet", split=(0.5, 0.25, 0.25), seed=3,
                            progress=False)
    engine.dispose()
    assert report.cases == 4 and report.written == 4 and not report.failed
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    images = sorted(p.name for p in (tmp_path / "imagesTr").iterdir())
    labels = sorted(p.name for p in (tmp_path / "labelsTr").iterdir())
    assert dataset["numTraining"] == len(images) == len(labels) == 3
    assert dataset["channel_names"] == {"0": "CT"} and dataset["labels"]["lesion"] == 1
    assert all(name.endswith("_0000" + dataset["file_ending"]) for name in images)
    assert [n.replace("_0000", "") for n in images] == labels
    fold = json.loads((tmp_path / "splits_final.json").read_text())[0]
    assert sorted(fold["train"] + fold["val"]) == [n[: -len("_0000.nii.gz")] for n in images]
    assert len(list((tmp_path / "imagesTs").iterdir())) == 1
    assert not list(tmp_path.glob("**/*.tmp*"))


@pytest.mark.slow  # shares an ~10 s module fixture (synthetic studies + SEGs)
def test_labels_align_voxel_for_voxel_with_images(synth_catalog: dict, tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    export_dataset(engine, tmp_path, ExportFormat.NIFTI, progress=False)
    engine.dispose()
    manifest = Manifest(tmp_path)
    assert len(manifest.rows) == 4
    for row in manifest.rows.values():
        image = sitk.ReadImage(str(tmp_path / row.image))
        label = sitk.ReadImage(str(tmp_path / row.label))
        assert image.GetSize() == label.GetSize()
        assert np.allclose(image.GetOrigin(), label.GetOrigin())
        assert np.allclose(image.GetSpacing(), label.GetSpacing())
        assert np.allclose(image.GetDirection(), label.GetDirection())
        volume = synth_catalog["volumes"][row.series_instance_uid]
        truth = synth_catalog["truth"][row.series_instance_uid]
        image_array = sitk.GetArrayFromImage(image)
        assert np.array_equal(image_array, np.rint(volume.array).astype(np.int16))
        label_array = sitk.GetArrayFromImage(label)
        assert np.array_equal(label_array.astype(bool), truth)
        assert row.label_voxels == int(truth.sum()) > 0
        # the lesions are brighter than the background they sit in: the label is on the image
        assert image_array[label_array > 0].mean() > image_array[label_array == 0].mean()


@pytest.mark.slow  # shares an ~10 s module fixture (synthetic studies + SEGs)
def test_monai_datalist_lists_every_case_by_split(synth_catalog: dict, tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    export_dataset(engine, tmp_path, "monai", split=(0.5, 0.5), seed=1, progress=False,
                   deidentify=True)
    engine.dispose()
    assert all(not r.study_instance_uid and not r.series_instance_uid
               for r in Manifest(tmp_path).rows.values())
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    entries = datalist["training"] + datalist["validation"]
    assert len(datalist["training"]) == len(datalist["validation"]) == 2
    assert datalist["test"] == []
    for entry in entries:
        assert (tmp_path / entry["image"]).is_file() and (tmp_path / entry["label"]).is_file()


@pytest.mark.slow  # shares an ~10 s module fixture (synthetic studies + SEGs)
def test_export_resumes_without_redoing_finished_cases(synth_catalog: dict,
                                                       tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    first = export_dataset(engine, tmp_path, "nifti", progress=False, max_cases=1)
    assert first.written == 1 and len(Manifest(tmp_path).rows) == 1
    done = next(iter(Manifest(tmp_path).rows.values()))
    stamp = (tmp_path / done.image).stat().st_mtime_ns
    second = export_dataset(engine, tmp_path, "nifti", progress=False)
    assert (second.written, second.skipped_done) == (3, 1)
    assert (tmp_path / done.image).stat().st_mtime_ns == stamp  # not rewritten
    (tmp_path / done.label).unlink()  # a lost file: that case is redone, nothing else
    third = export_dataset(engine, tmp_path, "nifti", progress=False)
    assert (third.written, third.skipped_done) == (1, 3)
    assert len(Manifest(tmp_path).rows) == 4
    engine.dispose()


def test_export_filters_select_cases(synth_catalog: dict, tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    report = export_dataset(engine, tmp_path, "nifti", CatalogFilter(kind="arrow"),
                            progress=False)
    engine.dispose()
    assert report.cases == 0 and not (tmp_path / "manifest.csv").exists()


def test_splits_are_by_patient_and_deterministic() -> None:
    patients = [f"p{i:03d}" for i in range(100)]
    a = assign_splits(patients, (0.7, 0.15, 0.15), seed=5)
    assert a == assign_splits(list(reversed(patients)), (0.7, 0.15, 0.15), seed=5)
    assert a != assign_splits(patients, (0.7, 0.15, 0.15), seed=6)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 15, "test": 15}
    assert parse_fractions("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    for bad in ("0.7,0.2", "a,b", "0.5,0.5,0.5,-0.5", "1.2,-0.2"):
        with pytest.raises(ValueError, match="Invalid split"):
            parse_fractions(bad)
