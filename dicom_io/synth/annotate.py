"""Draw a radiologist-style GSPS over any CT image (real or synthetic) from a 2D lesion mask.

This is how arrow prompts are tested on real CT (e.g. LUNG1 with its GTV outline): the same
encodings as the synthetic studies, written over the real image and referencing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from dicom_io.errors import DicomInputError
from dicom_io.synth.ct_writer import SCANNERS, StudyInfo, save
from dicom_io.synth.gsps_writer import (
    ENCODERS,
    EXPECTED_KINDS,
    Encoding,
    GspsIdentity,
    ImageRef,
    gsps_dataset,
)
from dicom_io.synth.measure import plane_marks


def _image(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as e:
        raise DicomInputError(f"{path}: not a readable DICOM image ({e})") from e
    missing = [k for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                           "SeriesInstanceUID", "Rows", "Columns", "PixelSpacing") if k not in ds]
    if missing:
        raise DicomInputError(f"{path}: cannot be annotated, it lacks {', '.join(missing)}")
    if "NumberOfFrames" in ds and int(ds.NumberOfFrames) > 1:
        raise DicomInputError(f"{path}: multi-frame images are not supported here")
    return ds


def _info(ds: pydicom.Dataset) -> StudyInfo:
    """Patient/study identity copied from the image, so the GSPS joins its study."""
    return StudyInfo(
        patient_name=str(ds.get("PatientName", "")), patient_id=str(ds.get("PatientID", "")),
        patient_sex=str(ds.get("PatientSex", "")), patient_age=str(ds.get("PatientAge", "")),
        study_instance_uid=ds.StudyInstanceUID, study_date=str(ds.get("StudyDate", "")),
        study_time=str(ds.get("StudyTime", "")),
        accession_number=str(ds.get("AccessionNumber", "")), study_id=str(ds.get("StudyID", "")),
        scanner=SCANNERS[0], series_instance_uid=ds.SeriesInstanceUID,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")))


def annotate_image(image: Path, mask: np.ndarray, encoding: Encoding | str, out: Path,
                   seed: int = 0, arrow_mm: float = 25.0) -> dict:
    """Write to ``out`` a GSPS over the CT ``image`` marking the lesion ``mask`` (rows, columns).

    Lines follow RECIST on the mask; arrows put the tip on its edge and the tail ``arrow_mm``
    outside. Returns a manifest-style entry (file, sop_instance_uid, encoding, expected_kinds,
    referenced_sop_instance_uid, points in PIXEL (column, row), length_mm).
    """
    image, out = Path(image), Path(out)
    encoding = Encoding(encoding)
    ds = _image(image)
    mask = np.asarray(mask)
    if mask.shape != (int(ds.Rows), int(ds.Columns)):
        raise ValueError(f"Invalid 'mask' shape {mask.shape} - {image} is "
                         f"{int(ds.Rows)}x{int(ds.Columns)}")
    spacing = float(np.mean([float(v) for v in ds.PixelSpacing]))
    rng = np.random.default_rng([seed, list(Encoding).index(encoding)])
    marks = plane_marks(mask, rng, arrow_mm / spacing)
    ref = ImageRef(ds.SOPInstanceUID, int(ds.Rows), int(ds.Columns), spacing,
                   sop_class_uid=ds.SOPClassUID,
                   rescale_intercept=float(ds.get("RescaleIntercept", 0.0)),
                   rescale_slope=float(ds.get("RescaleSlope", 1.0)))
    drawing = ENCODERS[encoding](marks, ref)
    entropy = ["sam2ct-annotate", ds.SOPInstanceUID, encoding.value, str(seed)]
    identity = GspsIdentity(generate_uid(entropy_srcs=[*entropy, "series"]),
                            generate_uid(entropy_srcs=entropy), 1, encoding)
    save(gsps_dataset(drawing, ref, _info(ds), identity), out)
    return {
        "file": str(out), "sop_instance_uid": identity.sop_instance_uid,
        "encoding": encoding.value, "expected_kinds": list(EXPECTED_KINDS[encoding]),
        "referenced_sop_instance_uid": ds.SOPInstanceUID,
        "points": np.round(drawing.points, 4).tolist(),
        "length_mm": None if drawing.length_mm is None else round(drawing.length_mm, 3),
    }
