"""The parts of a lesion SEG: what each segment is, and which algorithm made it.

Example
-------
>>> seg = SegmentSpec.for_annotation("1.2.3.4", 0, "line", "line 23.4 mm")
>>> seg.tracking_id
'1.2.3.4#0'
>>> AlgorithmSpec("classical", "1.0.0").family.name
'NEIGHBORHOOD_ANALYSIS'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from highdicom import AlgorithmIdentificationSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

# DICOM length limits (LO = 64 characters) of the attributes these values land in.
_LO_MAX = 64
_SEGMENT_LABEL_MAX = 64


class AlgorithmFamily(Enum):
    """Algorithm family codes (DICOM CID 7162) our segmenters belong to."""

    ARTIFICIAL_INTELLIGENCE = "ArtificialIntelligence"
    NEIGHBORHOOD_ANALYSIS = "NeighborhoodAnalysis"

    @property
    def code(self) -> Code:
        """The coded concept for AlgorithmFamilyCodeSequence."""
        return getattr(codes.cid7162, self.value)


def tracking_id_for(gsps_sop_instance_uid: str, annotation_index: int) -> str:
    """Tracking ID "<GSPS SOP Instance UID>#<index>", its UID cut from the left to fit 64
    characters ("..." then the UID's tail); the Tracking UID keeps the full identity."""
    suffix = f"#{annotation_index}"
    tracking_id = f"{gsps_sop_instance_uid}{suffix}"
    if len(tracking_id) <= _LO_MAX:
        return tracking_id
    keep = _LO_MAX - len(suffix) - 3
    return f"...{gsps_sop_instance_uid[-keep:]}{suffix}"


def tracking_uid_for(gsps_sop_instance_uid: str, annotation_index: int) -> str:
    """Deterministic Tracking UID of the segment made from one GSPS annotation."""
    return str(generate_uid(entropy_srcs=["sam2ct-tracking", gsps_sop_instance_uid,
                                          str(annotation_index)]))


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment is: a label, the annotation kind, and its tracking identifiers.

    ``tracking_id`` is human-readable ("<GSPS SOP Instance UID>#<annotation index>", see
    :func:`tracking_id_for` for UIDs too long to fit),
    ``tracking_uid`` a UID derived from the same pair so re-runs give the same value.
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
