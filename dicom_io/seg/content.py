"""The parts of a lesion SEG: what each segment is, which GSPS it came from, which algorithm
made it, and how the SEG series shows in a viewer.

Example
-------
>>> seg = SegmentSpec.for_annotation("1.2.3.4", 0, "line", "Lesion, line 23 mm")
>>> seg.tracking_id
'GSPS 3c8c5dbd annotation 0'
>>> annotation_index_of(seg.tracking_id)
0
>>> AlgorithmSpec("classical", "1.0.0").family.name
'NEIGHBORHOOD_ANALYSIS'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

from highdicom import AlgorithmIdentificationSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from dicom_io.gsps.annotation import Annotation, AnnotationKind

# DICOM length limits (LO = 64 characters) of the attributes these values land in.
_LO_MAX = 64
_SEGMENT_LABEL_MAX = 64
#: Presentation State Storage SOP classes share this root (grayscale, color, blending...).
PRESENTATION_STATE_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.11."
#: SEG series numbers are drawn from [_SERIES_NUMBER_BASE, _SERIES_NUMBER_BASE + _SPAN).
_SERIES_NUMBER_BASE = 10_000
_SERIES_NUMBER_SPAN = 90_000
_TRACKING_ID = re.compile(r"GSPS [0-9a-f]{8} annotation (\d+)")
#: Units a viewer's measurement readout ("18.1 mm", "A=196px") may hold besides numbers.
_UNITS = re.compile(r"mm|cm|px|ml|hu", re.IGNORECASE)
#: How an annotation kind is named in a segment label.
_KIND_NAMES = {AnnotationKind.POLYGON: "outline"}


class AlgorithmFamily(Enum):
    """Algorithm family codes (DICOM CID 7162) our segmenters belong to."""

    ARTIFICIAL_INTELLIGENCE = "ArtificialIntelligence"
    NEIGHBORHOOD_ANALYSIS = "NeighborhoodAnalysis"

    @property
    def code(self) -> Code:
        """The coded concept for AlgorithmFamilyCodeSequence."""
        return getattr(codes.cid7162, self.value)


def tracking_id_for(gsps_sop_instance_uid: str, annotation_index: int) -> str:
    """Tracking ID "GSPS <tag> annotation <index>": unique per annotation within a study, where
    ``tag`` is 8 hex digits of a hash of the GSPS UID, so the UID itself is not in it."""
    tag = hashlib.sha256(gsps_sop_instance_uid.encode()).hexdigest()[:8]
    return f"GSPS {tag} annotation {annotation_index}"


def annotation_index_of(tracking_id: str) -> int | None:
    """The annotation index written by :func:`tracking_id_for`, or None for another form."""
    match = _TRACKING_ID.fullmatch(str(tracking_id).strip())
    return int(match.group(1)) if match else None


def tracking_uid_for(gsps_sop_instance_uid: str, annotation_index: int) -> str:
    """Deterministic Tracking UID of the segment made from one GSPS annotation."""
    return str(generate_uid(entropy_srcs=["sam2ct-tracking", gsps_sop_instance_uid,
                                          str(annotation_index)]))


def readable_text(text: str, limit: int = _LO_MAX) -> str:
    """The first non-empty line of ``text`` as a DICOM LO value: ASCII (a superscript two
    becomes "2", other letters lose their accents), printable, no backslash (the value delimiter), runs of white space as one space, cut to
    ``limit`` characters."""
    for line in str(text).splitlines():
        ascii_line = unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode()
        kept = "".join(c if c.isprintable() else " " for c in ascii_line).replace("\\", "/")
        clean = " ".join(kept.split())
        if clean:
            return clean[:limit].rstrip()
    return ""


def _mm(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def measure_text(annotation: Annotation) -> str:
    """What was drawn and its size: "line 28 mm", "bidirectional 28 x 17 mm", "arrow"."""
    name = _KIND_NAMES.get(annotation.kind, annotation.kind.value)
    long_mm, short_mm = annotation.length_mm, annotation.short_axis_mm
    if long_mm and short_mm:
        return f"{name} {_mm(long_mm)} x {_mm(short_mm)} mm"
    if long_mm:
        return f"{name} {_mm(long_mm)} mm"
    return name


def segment_label(annotation: Annotation) -> str:
    """The label a radiologist reads: the annotation's own text (first line) if it has words,
    else "Lesion, <what was drawn and its size>" ("Lesion, line 28 mm"): a bare readout
    such as "18.1 mm" says less than that."""
    text = readable_text(annotation.text)
    if any(c.isalpha() for c in _UNITS.sub("", text)):
        return text
    return f"Lesion, {measure_text(annotation)}"


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment is: a label, the annotation kind, and its tracking identifiers.

    ``tracking_id`` is human-readable ("GSPS <hash tag> annotation <index>", see
    :func:`tracking_id_for`), ``tracking_uid`` a UID derived from the GSPS SOP Instance UID and
    the annotation index, so re-runs give the same values and a reader can check the pair
    (:func:`~dicom_io.seg.reader.read_provenance`).
    """

    label: str
    kind: str
    tracking_id: str
    tracking_uid: str
    description: str = ""

    def __post_init__(self) -> None:
        if not self.label.strip():
            raise ValueError("Invalid 'label' '' - a segment needs a label")
        if len(self.label) > _SEGMENT_LABEL_MAX:
            raise ValueError(
                f"Invalid 'label' '{self.label}' - longer than {_SEGMENT_LABEL_MAX} characters"
            )
        if not self.tracking_id or not self.tracking_uid:
            raise ValueError(
                f"Invalid segment '{self.label}' - tracking_id and tracking_uid must both be set"
            )
        if len(self.tracking_id) > _LO_MAX:
            raise ValueError(
                f"Invalid 'tracking_id' '{self.tracking_id}' - longer than {_LO_MAX} characters"
            )

    @classmethod
    def for_annotation(
        cls, gsps_sop_instance_uid: str, annotation_index: int, kind: str, label: str,
        description: str = "",
    ) -> SegmentSpec:
        """The segment for annotation ``annotation_index`` of one GSPS, with derived tracking."""
        return cls(
            label=label,
            kind=kind,
            tracking_id=tracking_id_for(gsps_sop_instance_uid, annotation_index),
            tracking_uid=tracking_uid_for(gsps_sop_instance_uid, annotation_index),
            description=description or f"{kind} annotation {annotation_index} of a GSPS",
        )

    @classmethod
    def from_annotation(cls, annotation: Annotation) -> SegmentSpec:
        """The segment of one GSPS annotation: its readable label (:func:`segment_label`), what
        was drawn as the description, and the tracking derived from the annotation."""
        measure = measure_text(annotation)
        return cls.for_annotation(
            annotation.gsps_sop_instance_uid, annotation.index, annotation.kind.value,
            segment_label(annotation),
            f"Lesion, {measure}; annotation {annotation.index} of its GSPS"[:_LO_MAX],
        )


@dataclass(frozen=True)
class PresentationStateRef:
    """The GSPS a SEG was segmented from: what the SEG references and how its series is named.

    ``label`` is the Presentation Label (Content Label), ``created`` its creation date and time
    as "YYYY-MM-DD HH:MM" (empty when absent or malformed). Build it with :meth:`from_dataset`.

    Example
    -------
    >>> ref = PresentationStateRef("1.2.840.10008.5.1.4.1.1.11.1", "1.2.3.4", "1.2.3", "1.2",
    ...                            "FOR_PRESENTATION", "2009-09-14 13:13")
    >>> ref.referencable
    True
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    label: str = ""
    created: str = ""

    @property
    def referencable(self) -> bool:
        """Whether every UID a reference needs is a valid UID of a presentation state class."""
        uids = (self.sop_class_uid, self.sop_instance_uid, self.series_instance_uid,
                self.study_instance_uid)
        return (all(UID(u).is_valid for u in uids)
                and self.sop_class_uid.startswith(PRESENTATION_STATE_CLASS_ROOT))

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PresentationStateRef:
        """The reference of a presentation state read from an untrusted file: never raises; a
        malformed value becomes empty (and the reference, if a UID is missing, unusable)."""
        meta = getattr(ds, "file_meta", None) or Dataset()
        return cls(
            sop_class_uid=_uid(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")),
            sop_instance_uid=_uid(ds.get("SOPInstanceUID")),
            series_instance_uid=_uid(ds.get("SeriesInstanceUID")),
            study_instance_uid=_uid(ds.get("StudyInstanceUID")),
            label=readable_text(str(ds.get("ContentLabel") or ""), 16),
            created=_date_time(ds.get("PresentationCreationDate"),
                               ds.get("PresentationCreationTime")),
        )


def _uid(value: object) -> str:
    text = str(value or "").strip()
    return text if UID(text).is_valid else ""


def _date_time(date: object, time: object) -> str:
    """DA + TM as "YYYY-MM-DD HH:MM" ("YYYY-MM-DD" without a time), "" when malformed."""
    day = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", str(date or "").strip())
    if day is None:
        return ""
    clock = re.match(r"(\d{2})(\d{2})", str(time or "").strip())
    text = "-".join(day.groups())
    return f"{text} {clock.group(1)}:{clock.group(2)}" if clock else text


def series_number_for(series_instance_uid: str) -> int:
    """A SEG series' number, derived from its UID: 10000-99999, the same on every re-run, and
    distinct between the SEG series of a study but by chance (two series collide with
    probability 1/90000)."""
    digest = hashlib.sha256(f"sam2ct-series-number {series_instance_uid}".encode()).digest()
    return _SERIES_NUMBER_BASE + int.from_bytes(digest[:8], "big") % _SERIES_NUMBER_SPAN


def series_description_for(number: int, algorithm_name: str,
                           state: PresentationStateRef | None) -> str:
    """"Lesions #<number> of <presentation label> <created> (<algorithm>)", at most 64
    characters: the series number keeps it distinct when two GSPS share label and time."""
    source = " ".join(p for p in (state.label, state.created) if p) if state else ""
    head = f"Lesions #{number}" + (f" of {source}" if source else "")
    room = _LO_MAX - len(head) - 3
    return f"{head} ({algorithm_name[:room]})" if room > 0 else head[:_LO_MAX]


@dataclass(frozen=True)
class AlgorithmSpec:
    """Which algorithm produced the masks: name, version, checkpoint hash, optional note.

    ``note`` (e.g. "fallback: no SAM2CT checkpoint configured") is written into the SEG's
    AlgorithmParameters so a reader sees why this algorithm ran.
    """

    name: str
    version: str
    checkpoint_sha256: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > _LO_MAX:
            raise ValueError(f"Invalid 'name' '{self.name}' - 1 to {_LO_MAX} characters")
        if not self.version.strip():
            raise ValueError(f"Invalid 'version' '' of algorithm '{self.name}' - must be set")
        sha = self.checkpoint_sha256
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ValueError(
                f"Invalid 'checkpoint_sha256' '{sha}' - 64 lowercase hexadecimal digits"
            )

    @property
    def family(self) -> AlgorithmFamily:
        """A learned model (a checkpoint, or SAM2CT) is AI; the classical one region analysis."""
        if self.checkpoint_sha256 is None and self.name.lower() == "classical":
            return AlgorithmFamily.NEIGHBORHOOD_ANALYSIS
        return AlgorithmFamily.ARTIFICIAL_INTELLIGENCE

    @property
    def version_string(self) -> str:
        """AlgorithmVersion: the version plus the checkpoint hash prefix, or 'classical'."""
        suffix = f"sha256:{self.checkpoint_sha256[:16]}" if self.checkpoint_sha256 else "classical"
        return f"{self.version} {suffix}"[:_LO_MAX]

    @property
    def device_serial_number(self) -> str:
        """DeviceSerialNumber of the software that made the masks: which trained unit (its
        checkpoint hash) or which release of a classical algorithm, as "<name> <identity>"."""
        identity = f"sha256:{self.checkpoint_sha256[:16]}" if self.checkpoint_sha256 \
            else self.version
        return f"{self.name} {identity}"[:_LO_MAX]

    @property
    def parameters(self) -> dict[str, str]:
        """AlgorithmParameters: the full checkpoint hash and the note, when there are any."""
        params = {"checkpoint_sha256": self.checkpoint_sha256 or "none (classical)"}
        if self.note:
            params["note"] = self.note
        return params

    def identification(self) -> AlgorithmIdentificationSequence:
        """The highdicom AlgorithmIdentificationSequence for each segment description."""
        return AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family.code,
            version=self.version_string,
            parameters=self.parameters,
        )
