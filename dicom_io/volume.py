"""A CT series as a 3D array of Hounsfield units with its patient-space geometry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_io.checks import described, finite_float, finite_floats, shown, within
from dicom_io.errors import DicomInputError
from dicom_io.series_index import CtStorage, index_series, is_localizer, select_ct_series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume came from: a single-frame image, or a frame of a multi-frame one."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    frame_number: int | None = None  # 1-based, only for multi-frame images


@dataclass(frozen=True)
class SeriesFacts:
    """What a catalog keeps of a CT series' header, read from its first slice."""

    patient_id: str
    study_date: str  # DA as stored ("" when absent)
    modality: str
    body_part: str | None
    manufacturer: str | None


def read_series_facts(volume: Volume) -> SeriesFacts:
    """The header facts of ``volume``'s first slice (pixel data not read)."""
    ds = pydicom.dcmread(volume.slices[0].path, stop_before_pixels=True)

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "")

    return SeriesFacts(text("PatientID"), text("StudyDate"), text("Modality") or "CT",
                       text("BodyPartExamined") or None, text("Manufacturer") or None)


@dataclass(frozen=True)
class Volume:
    """A CT series resampled to nothing: voxels exactly as stored, ordered along the slice normal.

    ``array`` has shape (slices, rows, columns) in HU (float32). ``affine`` maps a voxel index
    (column, row, slice, 1) to patient LPS millimetres, so a gantry tilt shows as shear.

    Example
    -------
    >>> vol.lps_to_index(vol.index_to_lps([[10, 20, 3]]))  # doctest: +SKIP
    array([[10., 20., 3.]])
    """

    array: np.ndarray
    affine: np.ndarray
    study_instance_uid: str
    series_instance_uid: str
    slices: tuple[SliceSource, ...]
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Invalid 'array' shape {self.array.shape} - a volume is 3D")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Invalid 'affine' shape {self.affine.shape} - must be 4x4")
        if len(self.slices) != self.array.shape[0]:
            raise ValueError(
                f"Invalid 'slices' - {len(self.slices)} sources for {self.array.shape[0]} slices"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in array axis order: (slice step, row spacing, column spacing)."""
        col, row, slc = (float(np.linalg.norm(self.affine[:3, i])) for i in range(3))
        return (slc, row, col)

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices (N, 3) as (column, row, slice) -> patient LPS mm (N, 3)."""
        index = np.atleast_2d(np.asarray(index, dtype=float))
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Patient LPS mm (N, 3) -> fractional voxel indices (N, 3) as (column, row, slice)."""
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        return (lps - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def slice_of_sop(self, sop_instance_uid: str, frame_number: int | None = None) -> int | None:
        """Index of the slice stored as this SOP instance (and frame), or None if not in the volume."""
        for i, src in enumerate(self.slices):
            if src.sop_instance_uid == sop_instance_uid and (
                frame_number is None or src.frame_number in (None, frame_number)
            ):
                return i
        return None


# --------------------------------------------------------------------------------------------
# Loading: a folder or file list -> Volume
# --------------------------------------------------------------------------------------------

# Bounds beyond which a CT header value is absurd (mm, or HU per stored value): refused.
MAX_POSITION_MM = 100_000.0
MAX_PIXEL_SPACING_MM = 100.0
MAX_RESCALE_SLOPE = 10_000.0
MAX_RESCALE_INTERCEPT = 1_000_000.0
# No CT series covers more than this along its slice normal (mm).
MAX_EXTENT_MM = 5_000.0
# Two slices closer than this along the normal (mm) are at the same position.
_SAME_POSITION_MM = 0.01
# Steps deviating from the mean by more than this fraction are non-uniform spacing.
_STEP_TOLERANCE = 0.01
# Positions off the slice normal by more than this angle (degrees) are a gantry tilt.
_TILT_TOLERANCE_DEG = 0.1
# Orientations differing by more than this (direction cosines) are mixed orientations.
_ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Frame:
    """One 2D image of a series with its geometry, before ordering."""

    source: SliceSource
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    shape: tuple[int, int]  # (rows, columns)
    slope: float
    intercept: float
    thickness: float | None = None  # SpacingBetweenSlices or SliceThickness, for one slice

    def __post_init__(self) -> None:
        if self.position.shape != (3,) or self.orientation.shape != (6,):
            raise ValueError(
                f"ImagePositionPatient needs 3 values and ImageOrientationPatient 6, got "
                f"{self.position.size} and {self.orientation.size}"
            )
        if min(self.shape) <= 0:
            raise ValueError(f"invalid image size {self.shape}")
        for name, values, limit in (("ImagePositionPatient", self.position, MAX_POSITION_MM),
                                    ("ImageOrientationPatient", self.orientation, 1.0 + 1e-3)):
            if not np.all(np.abs(values) <= limit):  # also NaN and infinity
                raise ValueError(f"Invalid '{name}' value {shown(values.tolist())} - must be "
                                 f"finite, within +-{limit:g}")
        for value in self.pixel_spacing:
            within(value, 1e-3, MAX_PIXEL_SPACING_MM, "PixelSpacing")
        within(abs(self.slope), 1e-6, MAX_RESCALE_SLOPE, "RescaleSlope (magnitude)")
        within(self.intercept, -MAX_RESCALE_INTERCEPT, MAX_RESCALE_INTERCEPT, "RescaleIntercept")


def load_series(
    source: str | Path | Sequence[str | Path], series_instance_uid: str | None = None
) -> Volume:
    """Load a CT series as a :class:`Volume` in HU, slices ordered along the slice normal.

    Parameters
    ----------
    source
        A folder (searched recursively), one file, or a list of files. Non-DICOM files and
        DICOMDIR are skipped; non-CT objects beside a single CT series are ignored.
    series_instance_uid
        Which series to load when ``source`` holds several CT series.

    Raises
    ------
    DicomInputError
        No images, ambiguous series, non-CT input, mixed geometry, or conflicting duplicate slices.

    Example
    -------
    >>> vol = load_series("LUNG1-001/ct")  # doctest: +SKIP
    >>> vol.array.shape, vol.spacing  # doctest: +SKIP
    ((134, 512, 512), (3.0, 0.977, 0.977))
    """
    try:
        return _load(source, series_instance_uid)
    except DicomInputError:
        raise
    except Exception as e:  # noqa: BLE001 - a hostile file must fail as one named input error
        raise DicomInputError(f"CT source {_source_name(source)} - cannot be loaded: "
                              f"{described(e)}") from e


def _source_name(source: object) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"{len(source)} files"  # type: ignore[arg-type]


def _load(source: str | Path | Sequence[str | Path], series_instance_uid: str | None) -> Volume:
    series = select_ct_series(index_series(source), source, series_instance_uid)
    images, warnings = _drop_localizers(series.datasets, series.series_instance_uid)
    _check_instances(images, series.series_instance_uid)
    datasets = {Path(ds.filename): ds for ds in images}
    frames = [f for ds in images for f in _frames_of(ds, series.series_instance_uid)]
    _check_common_geometry(frames, series.series_instance_uid)
    pixels = _PixelCache(datasets)
    frames, more = _order_frames(frames, pixels, series.series_instance_uid)
    warnings += more
    affine, more = _affine(frames, series.series_instance_uid)
    warnings += more
    for message in warnings:
        logger.warning("%s", message)
    return Volume(
        array=_finite(_stack(frames, pixels), series.series_instance_uid),
        affine=affine,
        study_instance_uid=str(images[0].get("StudyInstanceUID", "")),
        series_instance_uid=series.series_instance_uid,
        slices=tuple(f.source for f in frames),
        warnings=tuple(warnings),
    )


def _check_instances(images: list[Dataset], series_uid: str) -> None:
    """One study, and each SOP Instance UID one image: a series mixing studies, or one UID
    given to images at two positions, is refused rather than guessed at (an identical copy is
    dropped when the slices are ordered; a copy with other pixels is refused there)."""
    study = str(images[0].get("StudyInstanceUID", ""))
    seen: dict[str, tuple[str, str]] = {}
    for ds in images:
        name = Path(ds.filename).name
        other = str(ds.get("StudyInstanceUID", ""))
        if other != study:
            raise DicomInputError(f"series {series_uid} - file {name} belongs to another study "
                                  f"({shown(other)}, not {shown(study)})")
        uid, where = str(ds.get("SOPInstanceUID", "")), str(ds.get("ImagePositionPatient", ""))
        first = seen.setdefault(uid, (name, where))
        if first[1] != where:
            raise DicomInputError(f"series {series_uid} - SOP Instance UID {shown(uid)} names "
                                  f"two images at different positions ({first[0]} and {name})")


def _finite(array: np.ndarray, series_uid: str) -> np.ndarray:
    """``array`` when every voxel is a finite number (float pixel data may hold NaN)."""
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DicomInputError(f"series {series_uid} - {bad} voxel(s) are NaN or infinite")
    return array


def _drop_localizers(datasets: list[Dataset], series_uid: str) -> tuple[list[Dataset], list[str]]:
    """Leave out localizer (scout) images mixed into an axial series, with a warning."""
    images = [ds for ds in datasets if not is_localizer(ds)]
    if not images:
        raise DicomInputError(f"series {series_uid} - only localizer images, no CT volume")
    if len(images) == len(datasets):
        return images, []
    dropped = len(datasets) - len(images)
    return images, [f"series {series_uid}: {dropped} localizer image(s) left out"]


def _thickness(item: Dataset) -> float | None:
    """SpacingBetweenSlices, else SliceThickness, of a dataset or pixel-measures item."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = item.get(keyword)
        if value not in (None, "") and 0 < finite_float(value, keyword) <= MAX_EXTENT_MM:
            return float(value)
    return None


def _frames_of(ds: Dataset, series_uid: str) -> list[_Frame]:
    """The 2D frames of one CT instance (one for single-frame, NumberOfFrames for enhanced)."""
    where = f"series {series_uid}, file {ds.filename}"
    if "PixelData" not in ds:
        raise DicomInputError(f"{where} - CT instance without pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomInputError(f"{where} - CT image with {ds.SamplesPerPixel} samples per pixel")
    try:
        if CtStorage.is_multiframe(str(ds.SOPClassUID)):
            return _enhanced_frames(ds)
        return [_single_frame(ds)]
    except Exception as e:  # noqa: BLE001 - any missing, broken or absurd header value
        raise DicomInputError(f"{where} - missing or invalid geometry: {described(e)}") from e


def _single_frame(ds: Dataset) -> _Frame:
    """The geometry of a single-frame CT Image: every attribute in the dataset itself."""
    return _frame(ds, None, ds, ds, ds, ds)


def _frame(ds: Dataset, frame_number: int | None, position: Dataset, orientation: Dataset,
           measures: Dataset, rescale: Dataset) -> _Frame:
    """One frame of ``ds`` from the items that hold its plane position, orientation, pixel
    measures and rescale (the dataset itself, or an enhanced image's functional groups)."""
    return _Frame(
        source=SliceSource(str(ds.SOPInstanceUID), str(ds.SOPClassUID), Path(ds.filename),
                           frame_number),
        position=np.asarray(finite_floats(position.ImagePositionPatient,
                                          "ImagePositionPatient")),
        orientation=np.asarray(finite_floats(orientation.ImageOrientationPatient,
                                             "ImageOrientationPatient")),
        pixel_spacing=tuple(finite_floats(measures.PixelSpacing[:2], "PixelSpacing")),
        shape=(int(ds.Rows), int(ds.Columns)),
        slope=finite_float(rescale.get("RescaleSlope", 1.0) or 1.0, "RescaleSlope"),
        intercept=finite_float(rescale.get("RescaleIntercept", 0.0) or 0.0, "RescaleIntercept"),
        thickness=_thickness(measures),
    )


def _group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Functional group ``keyword`` of frame ``index``: per-frame first, then shared."""
    for holder in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(holder)
        if not items:
            continue
        item = items[index] if holder.startswith("Per") else items[0]
        seq = item.get(keyword)
        if seq:
            return seq[0]
    return None


def _enhanced_frames(ds: Dataset) -> list[_Frame]:
    """The frames of an Enhanced / Legacy Converted Enhanced CT image, via functional groups."""
    frames = []
    for i in range(int(ds.NumberOfFrames)):
        position = _group(ds, i, "PlanePositionSequence")
        orientation = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"frame {i + 1} lacks plane position, orientation or pixel measures")
        rescale = _group(ds, i, "PixelValueTransformationSequence") or Dataset()
        frames.append(_frame(ds, i + 1, position, orientation, measures, rescale))
    return frames


def _check_common_geometry(frames: list[_Frame], series_uid: str) -> None:
    """All frames must share orientation, matrix size and pixel spacing."""
    first = frames[0]
    for f in frames[1:]:
        if f.shape != first.shape:
            raise DicomInputError(
                f"series {series_uid} - mixed image sizes {first.shape} and {f.shape} "
                f"({f.source.path})"
            )
        if np.max(np.abs(f.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise DicomInputError(
                f"series {series_uid} - mixed image orientations ({f.source.path})"
            )
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise DicomInputError(
                f"series {series_uid} - mixed pixel spacings {first.pixel_spacing} and "
                f"{f.pixel_spacing} ({f.source.path})"
            )


def _normal(orientation: np.ndarray) -> np.ndarray:
    """Unit slice normal: row direction x column direction."""
    n = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        raise DicomInputError(f"Invalid ImageOrientationPatient {orientation.tolist()}")
    return n / norm


def _order_frames(
    frames: list[_Frame], pixels: _PixelCache, series_uid: str
) -> tuple[list[_Frame], list[str]]:
    """Sort frames along the normal; drop identical duplicates, refuse conflicting ones."""
    normal = _normal(frames[0].orientation)
    frames = sorted(frames, key=lambda f: float(f.position @ normal))
    kept = [frames[0]]
    dropped = 0
    for f in frames[1:]:
        prev = kept[-1]
        if abs(float((f.position - prev.position) @ normal)) > _SAME_POSITION_MM:
            kept.append(f)
            continue
        if np.linalg.norm(f.position - prev.position) > _SAME_POSITION_MM:
            raise DicomInputError(
                f"series {series_uid} - two slices at the same height along the normal but "
                f"shifted in plane ({prev.source.sop_instance_uid} and "
                f"{f.source.sop_instance_uid})"
            )
        if not np.array_equal(pixels.hu(prev), pixels.hu(f)):
            raise DicomInputError(
                f"series {series_uid} - two different slices at the same position "
                f"{np.round(f.position, 2).tolist()} ({prev.source.sop_instance_uid} and "
                f"{f.source.sop_instance_uid})"
            )
        dropped += 1
    warnings = []
    if dropped:
        warnings.append(
            f"series {series_uid}: {dropped} duplicate slice(s) with identical pixels dropped"
        )
    return kept, warnings


def _affine(frames: list[_Frame], series_uid: str) -> tuple[np.ndarray, list[str]]:
    """Voxel (column, row, slice) -> LPS affine and geometry warnings (gaps, tilt)."""
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = _normal(first.orientation)
    warnings: list[str] = []
    if len(frames) > 1:
        extent = float(np.linalg.norm(frames[-1].position - first.position))
        if extent > MAX_EXTENT_MM:
            raise DicomInputError(f"series {series_uid} - slices span {extent:.3g} mm (at most "
                                  f"{MAX_EXTENT_MM:g}): a slice position is wrong")
        step = (frames[-1].position - first.position) / (len(frames) - 1)
        warnings += _spacing_warnings(frames, normal, series_uid)
        warnings += _tilt_warnings(step, normal, series_uid)
    else:
        thickness = first.thickness or 1.0
        step = normal * thickness
        warnings.append(f"series {series_uid}: single slice, slice step set to {thickness:g} mm")
    affine = np.eye(4)
    affine[:3, 0] = row_dir * first.pixel_spacing[1]
    affine[:3, 1] = col_dir * first.pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first.position
    return affine, warnings


def _spacing_warnings(frames: list[_Frame], normal: np.ndarray, series_uid: str) -> list[str]:
    """Warn about missing slices and non-uniform steps; the affine uses the mean step."""
    heights = np.array([f.position @ normal for f in frames])
    steps = np.diff(heights)
    mean = float(heights[-1] - heights[0]) / len(steps)
    deviation = float(np.max(np.abs(steps - mean)))
    if deviation <= _STEP_TOLERANCE * abs(mean):
        return []
    median = float(np.median(steps))
    gaps = int(np.sum(steps > 1.5 * median))
    what = f"{gaps} gap(s), missing slices" if gaps else "non-uniform slice spacing"
    return [
        f"series {series_uid}: {what}: steps {steps.min():.3f}..{steps.max():.3f} mm, "
        f"affine uses mean step {mean:.3f} mm (max deviation {deviation:.3f} mm)"
    ]


def _tilt_warnings(step: np.ndarray, normal: np.ndarray, series_uid: str) -> list[str]:
    """Warn when slices are stacked off the normal (gantry tilt): the affine is then sheared."""
    cos = abs(float(step @ normal)) / max(float(np.linalg.norm(step)), 1e-12)
    angle = float(np.degrees(np.arccos(min(cos, 1.0))))
    if angle <= _TILT_TOLERANCE_DEG:
        return []
    return [
        f"series {series_uid}: gantry tilt: slices stacked {angle:.2f} deg off the slice normal, "
        "affine is sheared"
    ]


class _PixelCache:
    """Decoded HU frames, read from the deferred pixel data of each file once."""

    def __init__(self, datasets: dict[Path, Dataset]) -> None:
        self._datasets = datasets
        self._multi: dict[Path, np.ndarray] = {}

    def hu(self, frame: _Frame, out: np.ndarray | None = None) -> np.ndarray:
        """The frame's stored values rescaled to HU (float32, rows x columns), into ``out``."""
        src = frame.source
        if src.frame_number is None:
            stored = self._decode(src.path)
        else:
            if src.path not in self._multi:
                self._multi[src.path] = self._decode(src.path)
            stored = self._multi[src.path][src.frame_number - 1]
        if out is None:
            out = np.empty(stored.shape, dtype=np.float32)
        out[...] = stored
        if frame.slope != 1.0:
            out *= np.float32(frame.slope)
        if frame.intercept != 0.0:
            out += np.float32(frame.intercept)
        return out

    def _decode(self, path: Path) -> np.ndarray:
        """Decoded stored pixel values of one file, named in the error when decoding fails."""
        ds = self._datasets[path]
        try:
            return ds.pixel_array
        except Exception as e:  # noqa: BLE001 - whatever a broken pixel data element raises
            syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
            raise DicomInputError(
                f"DICOM file {path} - pixel data cannot be decoded (transfer syntax "
                f"{getattr(syntax, 'name', syntax)}): {e}"
            ) from e


def _stack(frames: list[_Frame], pixels: _PixelCache) -> np.ndarray:
    """The (slices, rows, columns) float32 HU array in frame order."""
    rows, cols = frames[0].shape
    out = np.empty((len(frames), rows, cols), dtype=np.float32)
    for i, frame in enumerate(frames):
        pixels.hu(frame, out=out[i])
    return out
