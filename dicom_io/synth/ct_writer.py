"""Write a synthetic HU volume as a single-frame CT Image series (every module dciodvfy checks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from dicom_io.files import atomic_path
from dicom_io.synth.phantom import Grid

RESCALE_INTERCEPT = -1024.0


@dataclass(frozen=True)
class Scanner:
    """Equipment written into the series (several vendors, so readers meet several styles)."""

    manufacturer: str
    model: str
    software: str
    kernel: str
    station: str


SCANNERS = (
    Scanner("SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A", "B30f", "SYNCT01"),
    Scanner("GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_22BC.50", "STANDARD", "SYNCT02"),
    Scanner("Philips", "iCT 256", "4.1.6.1", "B", "SYNCT03"),
    Scanner("TOSHIBA", "Aquilion ONE", "V8.9", "FC08", "SYNCT04"),
)


@dataclass(frozen=True)
class StudyInfo:
    """Patient, study and series identity shared by the CT and the GSPS of one synthetic study."""

    patient_name: str
    patient_id: str
    patient_sex: str
    patient_age: str
    study_instance_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    study_id: str
    scanner: Scanner
    series_instance_uid: str
    frame_of_reference_uid: str


@dataclass(frozen=True)
class WrittenSlice:
    """One CT file written: where, and how GSPS must reference it."""

    path: Path
    sop_instance_uid: str


def file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    """File meta information: Explicit VR Little Endian, our implementation class."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SAM2CT_SYNTH"
    return meta


def patient_study_attributes(ds: Dataset, info: StudyInfo) -> None:
    """Patient and General Study module attributes (fake, non-identifying values)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = info.patient_sex
    if info.patient_age:
        ds.PatientAge = info.patient_age
    ds.StudyInstanceUID = info.study_instance_uid
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.AccessionNumber = info.accession_number
    ds.StudyID = info.study_id
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST ABDOMEN"


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file: to a temporary name in the same folder, then rename."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _ct_slice(
    info: StudyInfo, grid: Grid, k: int, pixels: np.ndarray, sop_instance_uid: str
) -> Dataset:
    """The dataset of slice ``k`` (pixels already stored values, int16)."""
    ds = Dataset()
    ds.file_meta = file_meta(CTImageStorage, sop_instance_uid)
    patient_study_attributes(ds, info)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = info.study_date
    ds.InstanceCreationTime = info.study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for prefix in ("Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", info.study_date)
        setattr(ds, f"{prefix}Time", info.study_time)
    ds.Modality = "CT"
    ds.Manufacturer = info.scanner.manufacturer
    ds.ManufacturerModelName = info.scanner.model
    ds.SoftwareVersions = info.scanner.software
    ds.StationName = info.scanner.station
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.SeriesDescription = "SYNTH AXIAL"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = info.series_instance_uid
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = grid.slices - k  # instance 1 at the top, as scanners number them
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    position = grid.affine @ np.array([0.0, 0.0, float(k), 1.0])
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position[:3]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.SliceThickness = f"{grid.slice_spacing:g}"
    ds.PixelSpacing = [f"{grid.pixel_spacing:.6g}"] * 2
    ds.KVP = 120
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    ds.ConvolutionKernel = info.scanner.kernel
    ds.ReconstructionDiameter = f"{grid.columns * grid.pixel_spacing:.2f}"
    ds.GantryDetectorTilt = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.rows, grid.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def write_ct_series(
    hu: np.ndarray, grid: Grid, info: StudyInfo, sop_uids: list[str], out_dir: Path
) -> list[WrittenSlice]:
    """Write ``hu`` (slices, rows, columns) as ``out_dir/ct-NNNN.dcm``, one file per slice.

    ``sop_uids[k]`` is the SOP Instance UID of slice ``k``. Returns the slices in array order.
    """
    if len(sop_uids) != hu.shape[0]:
        raise ValueError(f"Invalid 'sop_uids' - {len(sop_uids)} UIDs for {hu.shape[0]} slices")
    stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), -1024, 4095).astype(np.int16)
    written = []
    for k in range(grid.slices):
        ds = _ct_slice(info, grid, k, stored[k], sop_uids[k])
        path = save(ds, out_dir / f"ct-{grid.slices - k:04d}.dcm")
        written.append(WrittenSlice(path, sop_uids[k]))
    return written
