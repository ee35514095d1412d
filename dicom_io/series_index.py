"""Index a folder (or a list) of DICOM files by series, reading headers only.

The index pass parses each file once with pixel data deferred (pydicom ``defer_size``): the pixel
bytes are read later, only for the series that is loaded, without parsing the header a second time.
Non-DICOM files (README, thumbnails) and DICOMDIR are skipped quietly.

Example
-------
>>> series = index_series("/data/study")  # doctest: +SKIP
>>> [(s.series_instance_uid, s.modality, len(s.datasets)) for s in series]  # doctest: +SKIP
[('1.2.3...', 'CT', 134), ('1.2.3...', 'RTSTRUCT', 1)]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_io.checks import described
from dicom_io.errors import DicomInputError

logger = logging.getLogger(__name__)

# Values larger than this are left on disk until accessed (pixel data, mostly).
_DEFER_SIZE = "64 KB"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


class CtStorage(StrEnum):
    """SOP classes a CT volume can be loaded from."""

    CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
    ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.2"

    @classmethod
    def is_ct(cls, sop_class_uid: str) -> bool:
        """Whether a SOP Class UID is one of ours."""
        return sop_class_uid in {m.value for m in cls}

    @classmethod
    def is_multiframe(cls, sop_class_uid: str) -> bool:
        """Whether instances of this CT SOP class hold frames described by functional groups."""
        return sop_class_uid in (
            cls.ENHANCED_CT_IMAGE.value,
            cls.LEGACY_CONVERTED_ENHANCED_CT_IMAGE.value,
        )


@dataclass
class SeriesFiles:
    """The headers of one series' files, in the order they were found."""

    series_instance_uid: str
    datasets: list[FileDataset] = field(default_factory=list)

    @property
    def modality(self) -> str:
        """The distinct Modality values of the files, '/'-joined ('' when absent)."""
        return "/".join(sorted({str(ds.get("Modality", "")) for ds in self.datasets} - {""}))

    @property
    def sop_class_uids(self) -> set[str]:
        """The distinct SOP Class UIDs in the series."""
        return {str(ds.SOPClassUID) for ds in self.datasets}

    @property
    def is_ct(self) -> bool:
        """Whether every file is a CT image we can load."""
        return all(CtStorage.is_ct(uid) for uid in self.sop_class_uids)

    @property
    def is_localizer(self) -> bool:
        """Whether every image is a localizer (scout): ImageType holds LOCALIZER."""
        return all(is_localizer(ds) for ds in self.datasets)

    def describe(self) -> str:
        """Short, patient-free description: uid, modality, SOP class name, file count."""
        names = sorted(UID(uid).name for uid in self.sop_class_uids)
        return (
            f"series {self.series_instance_uid} (modality {self.modality or 'unknown'}, "
            f"{', '.join(names)}, {len(self.datasets)} file(s), e.g. {self.datasets[0].filename})"
        )


def is_localizer(ds: Dataset) -> bool:
    """Whether an image is a localizer (scout) by its ImageType."""
    value = ds.get("ImageType", [])
    values = [value] if isinstance(value, str) else value
    return "LOCALIZER" in [str(v).upper() for v in values]


def collect_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by ``source``: a file, a folder (searched recursively) or a list of files."""
    if isinstance(source, str | Path):
        root = Path(source)
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        if root.is_file():
            return [root]
        raise DicomInputError(f"DICOM source {root} - no such file or folder")
    paths = [Path(p) for p in source]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DicomInputError(f"DICOM source {missing[0]} - no such file ({len(missing)} missing)")
    return paths


def read_header(path: Path) -> FileDataset | None:
    """Parse one file with large values deferred; None for non-DICOM files and DICOMDIR."""
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        logger.debug("skipping non-DICOM file %s", path)
        return None
    except Exception as e:  # noqa: BLE001 - whatever a broken or hostile file makes pydicom raise
        raise DicomInputError(f"DICOM file {path.name} - cannot be parsed: "
                              f"{described(e)}") from e
    media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if ds.file_meta else ""
    if media_class == _DICOMDIR_CLASS or "SOPClassUID" not in ds:
        logger.debug("skipping %s: DICOMDIR or no SOP Class UID", path)
        return None
    if "SeriesInstanceUID" not in ds:
        raise DicomInputError(f"DICOM file {path} - no SeriesInstanceUID")
    return ds


def index_series(source: str | Path | Sequence[str | Path]) -> list[SeriesFiles]:
    """Group the DICOM files of ``source`` by SeriesInstanceUID (headers only, pixels deferred)."""
    groups: dict[str, SeriesFiles] = {}
    for path in collect_paths(source):
        ds = read_header(path)
        if ds is None:
            continue
        uid = str(ds.SeriesInstanceUID)
        groups.setdefault(uid, SeriesFiles(uid)).datasets.append(ds)
    return list(groups.values())


def select_ct_series(
    series: list[SeriesFiles], source: object, series_instance_uid: str | None = None
) -> SeriesFiles:
    """The CT series to load: the one with ``series_instance_uid``, else the only CT series.

    Non-CT series beside a single CT series (an RTSTRUCT, a GSPS, a SEG, a localizer series) are
    ignored; a chosen
    or lone series that is not CT raises :class:`DicomInputError` naming its modality.
    """
    if not series:
        raise DicomInputError(f"DICOM source {source} - no DICOM images found")
    if series_instance_uid is not None:
        chosen = [s for s in series if s.series_instance_uid == series_instance_uid]
        if not chosen:
            raise DicomInputError(
                f"DICOM source {source} - series {series_instance_uid} not found "
                f"among {len(series)} series"
            )
        return _require_ct(chosen[0])
    ct = [s for s in series if s.is_ct and not s.is_localizer]
    if len(ct) == 1:
        return ct[0]
    if not ct:
        if len(series) == 1:
            return _require_ct(series[0])
        found = ", ".join(sorted({s.modality or "unknown" for s in series}))
        raise DicomInputError(
            f"DICOM source {source} - no CT series among {len(series)} series (modalities: {found})"
        )
    raise DicomInputError(
        f"DICOM source {source} - ambiguous: {len(ct)} CT series found; "
        "pass a SeriesInstanceUID to choose one"
    )


def _require_ct(series: SeriesFiles) -> SeriesFiles:
    """``series`` itself, or a DicomInputError naming its modality when it is not CT."""
    if not series.is_ct:
        raise DicomInputError(f"{series.describe()} - not a CT image series")
    return series
