"""Dataset export from a catalog of real SEG files, read by its real consumers.

nnU-Net (``nnUNetv2_extract_fingerprint --verify_dataset_integrity`` in its own virtualenv) and
MONAI (datalist loaders, ``LoadImaged``) read what we write; case ids are stable per catalog
(SQLite and PostgreSQL); folders refuse a second selection; missing sources and empty exports
fail with one line (command line and Prefect flow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import fresh_pg_database

from db import CatalogFilter, Recorder, open_catalog
from db.export import ExportError, ExportFormat, export_dataset
from db.export.manifest import Manifest
from db.export.splits import assign_splits, cross_validation_folds, parse_fractions
from db.keys import EXPORT_KEY, catalog_key
from db.queries import query_rows
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
from flows.cli import main

pytest_plugins = ["flow_fixtures"]

ALGORITHM = AlgorithmSpec("classical", "1.0.0")
STUDIES = 7
SECOND_SERIES = {6: 0}  # study 6 is catalogued as a second CT of study 0's patient: 6 patients
NNUNET_VERSION = "2.8.1"  # the release this test was written against


def catalogue_series(rec: Recorder, volume: Volume, masks: list[np.ndarray], gsps_uids: list[str],
                     seg_dir: Path, series_dir: Path, kind: str = "line") -> Path:
    """Write one SEG (a segment per mask, each from annotation 0 of its GSPS) and record it."""
    specs = [SegmentSpec.for_annotation(uid, 0, kind, f"{kind} lesion") for uid in gsps_uids]
    seg_path = write_seg(volume, masks, specs, ALGORITHM, seg_dir)
    record_series(rec, volume, masks, gsps_uids, seg_path, series_dir, kind)
    return seg_path


def record_series(rec: Recorder, volume: Volume, masks: list[np.ndarray], gsps_uids: list[str],
                  seg_path: Path, series_dir: Path | str, kind: str = "line",
                  patient_id: str | None = None) -> None:
    """Record a written SEG and its series (``patient_id`` overrides the CT's PatientID)."""
    header = pydicom.dcmread(volume.slices[0].path, stop_before_pixels=True)
    study_date = date.fromisoformat(str(header.StudyDate)[:4] + "-" + str(header.StudyDate)[4:6]
                                    + "-" + str(header.StudyDate)[6:8])
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    rec.record_series_results(SeriesResults(
        StudyRecord(volume.study_instance_uid, patient_id or str(header.PatientID), study_date),
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


# --- the catalogs: seven small synthetic CTs of six patients, their truth masks as SEGs ----------

@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Seven synthetic studies and a SEG of their truth masks each (not yet catalogued)."""
    from dicom_io.synth import make_studies

    root = tmp_path_factory.mktemp("synth-export")
    manifest = json.loads(make_studies(root / "studies", studies=STUDIES, seed=11, size=80,
                                       slices=32).read_text())
    series = []
    for index, study in enumerate(manifest["studies"]):
        ct_dir = root / "studies" / study["ct_dir"]
        volume = load_series(ct_dir)
        masks = [read_nifti(root / "studies" / lesion["truth"])[0].astype(bool)
                 for lesion in study["lesions"]]
        gsps = {g["lesion"]: g["sop_instance_uid"] for g in study["gsps"]}
        uids = [gsps[lesion["id"]] for lesion in study["lesions"]]
        specs = [SegmentSpec.for_annotation(uid, 0, "line", "line lesion") for uid in uids]
        seg_path = write_seg(volume, masks, specs, ALGORITHM, root / "segs")
        owner = manifest["studies"][SECOND_SERIES.get(index, index)]
        series.append({"volume": volume, "masks": masks, "uids": uids, "seg": seg_path,
                       "ct_dir": ct_dir, "study": study, "patient": f"PAT-{owner['name']}"})
    return {"root": root, "series": series, "manifest": manifest}


def record_all(url: str, series: list[dict]) -> None:
    """Catalogue the synthetic series at ``url``."""
    engine = open_catalog(url)
    rec = Recorder(engine)
    for s in series:
        record_series(rec, s["volume"], s["masks"], s["uids"], s["seg"], s["ct_dir"],
                      patient_id=s["patient"])
    engine.dispose()


@pytest.fixture(scope="module")
def synth_catalog(synth_data: dict) -> dict:
    """The synthetic series in a SQLite catalog, with their truth labels and volumes."""
    url = f"sqlite:///{synth_data['root'] / 'catalog.sqlite'}"
    record_all(url, synth_data["series"])
    by_uid = {s["volume"].series_instance_uid: s for s in synth_data["series"]}
    return {"url": url, "root": synth_data["root"],
            "truth": {uid: np.any(s["masks"], axis=0) for uid, s in by_uid.items()},
            "volumes": {uid: s["volume"] for uid, s in by_uid.items()}}


@pytest.fixture(scope="module")
def pg_catalog(synth_data: dict) -> Iterator[str]:
    """The same series in a fresh PostgreSQL catalog (dropped afterwards); yields its URL."""
    with fresh_pg_database("export") as url:
        record_all(url, synth_data["series"])
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, synth_catalog: dict) -> str:
    """The synthetic catalog on each backend."""
    if request.param == "sqlite":
        return synth_catalog["url"]
    return request.getfixturevalue("pg_catalog")


def _engine(synth_catalog: dict):
    return open_catalog(synth_catalog["url"], migrate=False)


def _case_patients(out: Path) -> dict[str, str]:
    return {row.case_id: row.patient for row in Manifest(out).rows.values()}


# --- nnU-Net --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def nnunet_bin(request: pytest.FixtureRequest) -> Path:
    """nnU-Net v2's commands, installed once in a virtualenv under pytest's cache.

    Our own site-packages sit behind the virtualenv's (a .pth file), so pip takes our torch and
    everything else we have, and installs only what nnU-Net adds; our .venv is not touched.
    """
    venv = request.config.cache.mkdir(f"nnunetv2-{NNUNET_VERSION}")
    bin_dir = venv / "bin"
    if (bin_dir / "nnUNetv2_extract_fingerprint").exists():
        return bin_dir
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    [site] = (venv / "lib").glob("python3*/site-packages")
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz-sam2ct-site.pth").write_text("\n".join(ours) + "\n")
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
                          f"nnunetv2=={NNUNET_VERSION}"], capture_output=True, text=True,
                         timeout=1500)
    if pip.returncode != 0:
        pytest.skip(f"nnunetv2 {NNUNET_VERSION} cannot be installed here: "
                    f"{(pip.stderr or pip.stdout).strip().splitlines()[-1:]}")
    return bin_dir


def _nnunet(bin_dir: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "nnUNet_raw": str(out / "nnUNet_raw"),
           "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"),
           "nnUNet_results": str(out / "nnUNet_results")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow  # the synthetic catalog (~10 s); nnU-Net installs once per cache (minutes)
@pytest.mark.timeout(1800)  # the first run installs nnU-Net inside the test's setup
def test_nnunet_reads_the_export_and_its_patient_grouped_folds(synth_catalog: dict,
                                                               nnunet_bin: Path,
                                                               tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    report = export_dataset(engine, tmp_path, "nnunet", split=(0.8, 0.0, 0.2), seed=3,
                            progress=False, nnunet_dataset="Dataset502_Lesions")
    engine.dispose()
    assert report.cases == STUDIES and report.written == STUDIES and not report.failed
    raw = tmp_path / "nnUNet_raw" / "Dataset502_Lesions"
    dataset = json.loads((raw / "dataset.json").read_text())
    images = sorted(p.name for p in (raw / "imagesTr").iterdir())
    labels = sorted(p.name for p in (raw / "labelsTr").iterdir())
    assert dataset["numTraining"] == len(images) == len(labels) >= 5
    assert [n.replace("_0000", "") for n in images] == labels
    assert len(list((raw / "imagesTs").iterdir())) == STUDIES - len(images) >= 1
    training = [n.removesuffix("_0000.nii.gz") for n in images]
    patients = _case_patients(tmp_path)

    splits_path = tmp_path / "nnUNet_preprocessed" / "Dataset502_Lesions" / "splits_final.json"
    folds = json.loads(splits_path.read_text())
    assert len(folds) == report.figures["folds"] == 5
    assert sorted(c for fold in folds for c in fold["val"]) == sorted(training)
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == sorted(training)
        assert not {patients[c] for c in fold["train"]} & {patients[c] for c in fold["val"]}
    assert len(set(patients.values())) < len(patients)  # one patient has two series...
    shared = [c for c in training if list(patients.values()).count(patients[c]) == 2]
    if shared:  # ...and they validate in the same fold (when that patient is not in imagesTs:
        # pseudonyms are random per catalog; test_cross_validation_folds_... always checks it)
        assert any(set(shared) <= set(fold["val"]) for fold in folds)

    before = splits_path.read_bytes()
    run = _nnunet(nnunet_bin, tmp_path, "nnUNetv2_extract_fingerprint", "-d", "502", "-np", "1",
                  "--verify_dataset_integrity")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    fingerprint = json.loads((splits_path.parent / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["shapes_after_crop"]) == len(training)
    assert splits_path.read_bytes() == before  # nnU-Net keeps our folds


# --- MONAI ----------------------------------------------------------------------------------------

@pytest.mark.slow  # shares the synthetic catalog
def test_monai_loaders_read_every_section_and_the_images(synth_catalog: dict,
                                                         tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist, load_decathlon_properties
    from monai.transforms import LoadImaged

    engine = _engine(synth_catalog)
    export_dataset(engine, tmp_path, "monai", split=(0.5, 0.25, 0.25), seed=1, progress=False)
    engine.dispose()
    datalist = tmp_path / "datalist.json"
    properties = load_decathlon_properties(datalist, ["labels", "modality", "numTraining",
                                                      "numValidation", "numTest"])
    assert properties["labels"] == {"0": "background", "1": "lesion"}
    assert properties["modality"] == {"0": "CT"}
    counts = {"training": properties["numTraining"], "validation": properties["numValidation"],
              "test": properties["numTest"]}
    assert sum(counts.values()) == STUDIES and min(counts.values()) > 0
    voxels = {row.case_id: row.label_voxels for row in Manifest(tmp_path).rows.values()}
    loader = LoadImaged(keys=["image", "label"], image_only=True)
    for key, count in counts.items():
        items = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=key)
        assert len(items) == count
        for item in items:
            loaded = loader(item)
            image, label = loaded["image"], loaded["label"]
            assert image.shape == label.shape == (80, 80, 32)  # MONAI's x, y, z
            assert set(np.unique(label.numpy())) <= {0, 1}
            assert int(label.numpy().sum()) == voxels[item["case_id"]] > 0
            assert float(image.numpy()[label.numpy() > 0].mean()) > float(image.numpy().mean())


@pytest.mark.slow  # shares the synthetic catalog
def test_monai_datalist_leaves_out_empty_sections(synth_catalog: dict, tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist

    engine = _engine(synth_catalog)
    export_dataset(engine, tmp_path, "monai", split=(0.5, 0.5), seed=1, progress=False,
                   deidentify=True)
    engine.dispose()
    assert all(not r.study_instance_uid and not r.series_instance_uid
               for r in Manifest(tmp_path).rows.values())
    document = json.loads((tmp_path / "datalist.json").read_text())
    assert "test" not in document and document["numTest"] == 0
    sections = [k for k in ("training", "validation", "test") if k in document]
    assert sections == ["training", "validation"]
    found = [len(load_decathlon_datalist(tmp_path / "datalist.json", data_list_key=k))
             for k in sections]
    assert sum(found) == STUDIES


# --- NIfTI, resuming, filters, splits --------------------------------------------------------------

@pytest.mark.slow  # shares the synthetic catalog
def test_labels_align_voxel_for_voxel_with_images(synth_catalog: dict, tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    export_dataset(engine, tmp_path, ExportFormat.NIFTI, progress=False)
    engine.dispose()
    manifest = Manifest(tmp_path)
    assert len(manifest.rows) == STUDIES
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


@pytest.mark.slow  # shares the synthetic catalog
def test_export_resumes_without_redoing_finished_cases(synth_catalog: dict,
                                                       tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    first = export_dataset(engine, tmp_path, "nifti", progress=False, max_cases=1)
    assert first.written == 1 and len(Manifest(tmp_path).rows) == 1
    done = next(iter(Manifest(tmp_path).rows.values()))
    stamp = (tmp_path / done.image).stat().st_mtime_ns
    second = export_dataset(engine, tmp_path, "nifti", progress=False)
    assert (second.written, second.skipped_done) == (STUDIES - 1, 1)
    assert (tmp_path / done.image).stat().st_mtime_ns == stamp  # not rewritten
    (tmp_path / done.label).unlink()  # a lost file: that case is redone, nothing else
    third = export_dataset(engine, tmp_path, "nifti", progress=False)
    assert (third.written, third.skipped_done) == (1, STUDIES - 1)
    assert len(Manifest(tmp_path).rows) == STUDIES
    engine.dispose()


def test_export_matching_nothing_fails_and_writes_nothing(synth_catalog: dict,
                                                          tmp_path: Path) -> None:
    engine = _engine(synth_catalog)
    with pytest.raises(ExportError, match="nothing to export"):
        export_dataset(engine, tmp_path / "x", "nifti", CatalogFilter(kind="arrow"),
                       progress=False)
    engine.dispose()
    assert not (tmp_path / "x").exists()


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


def test_cross_validation_folds_keep_each_patient_in_one_fold() -> None:
    rng = np.random.default_rng(4)
    cases = {f"case_{i:03d}": f"p{int(rng.integers(0, 23)):02d}" for i in range(60)}
    folds = cross_validation_folds(cases, seed=2)
    assert len(folds) == 5
    assert sorted(c for f in folds for c in f["val"]) == sorted(cases)  # each case once
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == sorted(cases)
        assert not {cases[c] for c in fold["train"]} & {cases[c] for c in fold["val"]}
    assert folds == cross_validation_folds(dict(reversed(cases.items())), seed=2)
    assert folds != cross_validation_folds(cases, seed=3)
    assert len(cross_validation_folds({"a": "p1", "b": "p2", "c": "p3"}, seed=0)) == 3
    assert cross_validation_folds({"a": "p1", "b": "p1"}, seed=0) == []


# --- case ids: stable per catalog, the key stays in the catalog ------------------------------------

@pytest.mark.slow  # shares the synthetic catalogs (SQLite and PostgreSQL)
def test_case_ids_are_stable_per_catalog_and_the_key_stays_in_it(synth_catalog: dict,
                                                                 pg_catalog: str,
                                                                 tmp_path: Path) -> None:
    ids: dict[str, set[str]] = {}
    for name, url in (("sqlite", synth_catalog["url"]), ("postgresql", pg_catalog)):
        engine = open_catalog(url, migrate=False)
        key = catalog_key(engine, EXPORT_KEY)
        first = export_dataset(engine, tmp_path / f"{name}-a", "nifti", progress=False)
        second = export_dataset(engine, tmp_path / f"{name}-b", "nnunet", progress=False)
        engine.dispose()
        assert first.written == second.written == STUDIES
        ids[name] = set(_case_patients(tmp_path / f"{name}-a"))
        assert set(_case_patients(tmp_path / f"{name}-b")) == ids[name]
        for path in (tmp_path / f"{name}-a").rglob("*"):  # the key is in no exported file
            assert path.is_dir() or key.encode() not in path.read_bytes(), path
        assert not list(tmp_path.rglob(".export-state"))
    assert not ids["sqlite"] & ids["postgresql"]  # each catalog its own key


# --- a folder holds one export ----------------------------------------------------------------------

@pytest.mark.slow  # shares the synthetic catalogs
def test_folder_refuses_another_selection_unless_forced(catalog_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    base = ["export", "--out", str(out), "--catalog", catalog_url, "--no-progress"]
    assert main([*base, "--format", "nifti", "--min-volume", "0.01"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["written"] == STUDIES
    spec = json.loads((out / "export.json").read_text())
    assert spec["format"] == "nifti" and spec["filters"] == {"min_volume_ml": "0.01"}
    for other, changed in ((["--format", "nifti"], "filters.min_volume_ml"),
                           (["--format", "monai", "--min-volume", "0.01"], "format"),
                           (["--format", "nifti", "--min-volume", "0.01", "--split", "0.5,0.5"],
                            "split"),
                           (["--format", "nifti", "--min-volume", "0.01", "--pixels-cleaned"],
                            "pixels_cleaned")):
        assert main([*base, *other]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"differs in {changed}" in err, err
        assert "--force" in err
    assert len(Manifest(out).rows) == STUDIES  # the refused runs changed nothing
    assert main([*base, "--format", "nifti", "--min-volume", "0.01"]) == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == STUDIES

    old = [out / p for row in Manifest(out).rows.values() for p in (row.image, row.label)]
    assert main([*base, "--format", "monai", "--force", "--split", "0.5,0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == STUDIES
    assert json.loads((out / "export.json").read_text())["format"] == "monai"
    kept = {out / p for row in Manifest(out).rows.values() for p in (row.image, row.label)}
    assert all(p.exists() for p in kept) and not [p for p in old if p.exists() and p not in kept]
    assert json.loads((out / "datalist.json").read_text())["numTraining"] > 0


def test_a_folder_from_an_older_version_is_refused(synth_catalog: dict, tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("case_id,split\n")
    engine = _engine(synth_catalog)
    with pytest.raises(ExportError, match="older version"):
        export_dataset(engine, tmp_path, "nifti", progress=False)
    engine.dispose()


# --- source paths: absolute when recorded, checked when exported -----------------------------------

def _catalog_of(tmp_path: Path, synth_data: dict, series_dirs: list[Path | str]) -> str:
    """A SQLite catalog of the first series with the given recorded CT paths."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    engine = open_catalog(url)
    rec = Recorder(engine)
    for s, series_dir in zip(synth_data["series"], series_dirs, strict=False):
        record_series(rec, s["volume"], s["masks"], s["uids"], s["seg"], series_dir)
    engine.dispose()
    return url


@pytest.mark.slow  # shares the synthetic studies
def test_missing_sources_fail_by_case_and_an_empty_export_fails(
        synth_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root = synth_data["root"]
    relative = synth_data["series"][0]["ct_dir"].relative_to(root)
    url = _catalog_of(tmp_path, synth_data, [relative, synth_data["series"][1]["ct_dir"]])
    monkeypatch.chdir(tmp_path)  # not where the relative path was typed
    args = ["export", "--format", "nifti", "--catalog", url, "--no-progress"]
    assert main([*args, "--out", "partial"]) == 1  # one case failed, the other is written
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 1
    [failure] = summary["failed"]
    assert failure.startswith("case_") and "not found (recorded as a relative path)" in failure

    engine = open_catalog(url, migrate=False)  # only the broken case: nothing is exported
    with pytest.raises(ExportError, match="no case exported") as raised:
        export_dataset(engine, tmp_path / "empty", "nifti",
                       CatalogFilter(study_instance_uid=synth_data["series"][0]["volume"]
                                     .study_instance_uid), progress=False)
    engine.dispose()
    assert failure.split(":")[0] in str(raised.value)
    monkeypatch.chdir(root)  # where the path was typed, the same export works
    assert main([*args, "--out", str(tmp_path / "from-root")]) == 0
    capsys.readouterr()


@pytest.mark.slow  # segments one synthetic study with the classical model
def test_segment_records_absolute_paths_an_export_reads_from_anywhere(
        synth_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root, study = synth_data["root"] / "studies", synth_data["series"][0]["study"]
    gsps = next(g for g in study["gsps"] if g["encoding"] == "line-mm")
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    monkeypatch.chdir(root)
    assert main(["segment", "--series", study["ct_dir"], "--gsps", gsps["file"], "--out",
                 "seg-out", "--model", "classical", "--catalog", url]) == 0
    capsys.readouterr()
    [row] = query_rows(open_catalog(url, migrate=False))
    assert Path(row.series_path).is_absolute() and Path(row.seg_path).is_absolute()
    assert Path(row.series_path) == (root / study["ct_dir"]).resolve()
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--format", "nifti", "--out", "ds", "--catalog", url,
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 1


@pytest.mark.slow  # segments one synthetic study with the classical model
def test_segment_jobs_record_absolute_paths(synth_data: dict, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.segment_jobs import SeriesJob, run_job

    root, study = synth_data["root"] / "studies", synth_data["series"][1]["study"]
    gsps = next(g for g in study["gsps"] if g["encoding"] == "line-mm")
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    open_catalog(url).dispose()
    monkeypatch.chdir(root)  # a harvest whose staging and output folders were given relative
    job = SeriesJob(study_instance_uid=study["study_instance_uid"],
                    series_instance_uid=study["series_instance_uid"],
                    series_dir=study["ct_dir"], gsps_files=[gsps["file"]])
    outcome = run_job(job, url, "seg-out", model="classical")
    assert outcome.ok == 1, outcome
    [row] = query_rows(open_catalog(url, migrate=False))
    assert Path(row.series_path) == (root / study["ct_dir"]).resolve()
    assert Path(row.seg_path).is_absolute() and Path(row.seg_path).is_file()


# --- the Prefect flow fails when it exports nothing -------------------------------------------------

@pytest.mark.slow  # a Prefect test server for the module
def test_export_flow_fails_when_nothing_is_exported(harness, synth_data: dict,
                                                    tmp_path: Path) -> None:
    from flows.export_flow import export_dataset as export_flow

    missing = tmp_path / "moved-away"
    url = _catalog_of(tmp_path, synth_data, [missing])
    state = export_flow(out=str(tmp_path / "out"), fmt="nifti", catalog_url=url,
                        return_state=True)
    assert state.is_failed(), state
    assert "no case exported" in str(state.message) or "no case exported" in repr(
        state.result(raise_on_failure=False))
    (tmp_path / "ok").mkdir()
    ok = _catalog_of(tmp_path / "ok", synth_data, [synth_data["series"][0]["ct_dir"]])
    state = export_flow(out=str(tmp_path / "ok-out"), fmt="nnunet", catalog_url=ok,
                        return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert (result["written"], result["failed"], result["folds"]) == (1, 0, 0)
