"""De-identification by the PS3.15 Basic Application Level Confidentiality Profile (Annex E).

Where the profile comes from
----------------------------
The action of every attribute is read from PS3.15 Table E.1-1, column "Basic Prof.", of the
**2026c** edition, as the package ``dicom-anonymizer`` (KitwareMedical, pinned to 2.1.0 in
``pyproject.toml``) publishes it in ``dicomanonymizer.dicom_anonymization_databases
.dicomfields_2026c``: 655 rows (652 attributes and 3 repeating-group rows: curve data
(50xx,xxxx), overlay data (60xx,3000) and overlay comments (60xx,4000)), grouped by the action
code exactly as the standard writes it (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*). Why this source:

- it is the standard's own table, extracted by the maintainers' scraper from the published
  PS3.15 and kept current (release 2.1.0, September 2026, added 2026c; 2023e and 2024b ship
  beside it), so moving to a newer edition is the constant ``PROFILE_EDITION`` plus the pin,
  and ``tests/test_deid_profile.py`` then shows each difference attribute by attribute;
- it installs from PyPI as plain data (no download at run time; the standard's DocBook XML is
  not on a registry), and nothing is typed by hand here;
- its rows already carry 2026c's additions the older hand-typed list missed (Consulting
  Physician's Name, Patient's Telecom Information, Review Date/Time, Source Serial Number, Date
  of Last Calibration, Station AE Title, Reason for Visit, Contribution DateTime, ...).

Only that table is used, not the package's anonymizer (it replaces UIDs at random per process;
ours are keyed, so every export of a catalog maps a UID alike).

What each action does here
--------------------------
X removes; Z empties (a sequence: no items); D replaces by a dummy of the element's VR (a
sequence: every value in its items replaced so, UIDs remapped); U remaps UIDs with the keyed
``UidMapper``. A compound code ("X unless Z or D is required to keep the IOD valid") is resolved
without knowing the IOD: a value takes the choice valid in any IOD (X/Z -> Z, X/D, Z/D and
X/Z/D -> D: an empty value is valid where the attribute is Type 2 or 3); a sequence is removed
(the six compound-coded ones are Type 3 in the CT and Segmentation IODs, and a sequence without
items is invalid there) unless it already has no items (Type 2 where it is: kept empty);
X/Z/U* keeps the sequence and applies the profile to its items (their instance UIDs are U rows).
K (attributes the table does not list) keeps the value, and a sequence's items are de-identified
in turn. C (clean) is what K text gets: a run of four or more dot-separated numbers, twelve
characters or more (a UID, whole or cut), is remapped like a UID.

Beyond the table: private attributes are removed; the file meta keeps only the SOP class and
instance (remapped) and the transfer syntax. Two attributes our SEG writer (``dicom_io.seg``)
fills from the GSPS are cleaned: Tracking ID ("GSPS <hash of the GSPS UID> annotation <i>") gets
its hash re-keyed; Segment Label keeps only the form made from the drawing ("Lesion, line 28
mm"), any other (the first line of the GSPS's free text) becomes "Lesion". No option of Table
E.1-1 is claimed, so De-identification Method Code Sequence (CID 7050) lists the Basic Profile
(113100) and, when the caller states that burned-in annotation was cleaned from the pixels
(``pixels_cleaned``), the Clean Pixel Data Option (113101); without that statement an image
with BurnedInAnnotation YES is refused (``deidentify_file`` returns None).

Example
-------
>>> deid = Deidentifier(UidMapper(key=b"secret"), pseudonym="a1b2c3")
>>> clean = deid.apply(pydicom.dcmread("ct.dcm"))  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from dicom_io.errors import DicomInputError
from dicom_io.files import atomic_path

#: the PS3.15 edition of Table E.1-1 applied, and where it is read from (see the module doc)
PROFILE_EDITION = "2026c"
PROFILE_SOURCE = "dicom-anonymizer"
PROFILE_MODULE = f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{PROFILE_EDITION}"

#: the source's row groups and the Basic Profile action code each stands for
CATEGORY_CODES: dict[str, str] = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}


class Action(enum.StrEnum):
    """What the profile does to one attribute (PS3.15 Table E.1-1 legend)."""

    KEEP = "K"
    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    UID = "U"
    CLEAN = "C"
    ITEMS = "U*"  # keep the sequence, de-identify its items (the U* of X/Z/U*)


# Compound codes resolved without knowing the IOD (see the module doc): a value takes the choice
# valid in any IOD; a sequence is removed (the compound-coded ones are Type 3 in the CT and
# Segmentation IODs, where a sequence without items is invalid) unless it already has no items.
COMPOUND_CHOICE: dict[str, Action] = {
    "X/Z": Action.ZERO, "X/D": Action.DUMMY, "Z/D": Action.DUMMY, "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.ITEMS,
}
SEQUENCE_CHOICE: dict[str, Action] = {
    "X/Z": Action.REMOVE, "X/D": Action.REMOVE, "Z/D": Action.DUMMY, "X/Z/D": Action.REMOVE,
    "X/Z/U*": Action.ITEMS,
}

# Dummy values by VR for action D (valid for any attribute of that VR).
DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS",
    "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS", "LT": "ANONYMOUS",
    "ST": "ANONYMOUS", "UT": "ANONYMOUS", "UC": "ANONYMOUS", "AE": "ANONYMOUS",
    "UR": "urn:anonymous", "AS": "000Y", "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0,
    "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
}
_DUMMY_BYTES = b"\x00" * 8  # OB, OW, OF, OD, OL, OV, UN: a multiple of every item size

# Text VRs that C cleans, with their maximum length in characters (None: unbounded).
_TEXT_VRS: dict[str, int | None] = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UC": None,
                                    "UT": None}
# A UID, whole or cut: four or more dot-separated numbers, twelve characters or more (shorter
# runs, such as software versions "3.0.2.1", are kept), not glued to a word.
_UID_RUN = re.compile(r"(?<!\w)\d+(?:\.\d+){3,}(?!\w)")
_UID_RUN_MIN = 12
# A hash of an identifier: eight or more lower-case hex digits, not part of a word or a number.
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z.])[0-9a-f]{8,}(?![0-9A-Za-z.])")

# Attributes Table E.1-1 does not list that our SEG writer (dicom_io.seg) fills from a source
# object. Tracking ID names the GSPS by a hash of its UID ("GSPS 3c8c5dbd annotation 0"): the
# hash is re-keyed. Segment Label may be the first line of the GSPS's free text (a name, a
# date...): only the label made from the drawing ("Lesion, line 28 mm") is kept, any other
# becomes "Lesion" (the segment's coded type).
TRACKING_ID = int(Tag("TrackingID"))
SEGMENT_LABEL = int(Tag("SegmentLabel"))
_DRAWING_LABEL = re.compile(r"Lesion, [a-z]+(?: \d+(?:\.\d)?(?: x \d+(?:\.\d)?)? mm)?")
_LABEL_DUMMY = "Lesion"

# CID 7050 codes stated in De-identification Method Code Sequence.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "DCM", "Clean Pixel Data Option")


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1's Basic Profile column: action code by tag, and the repeating-group rows.

    ``masked`` holds ``(value, mask, code)`` over the 32-bit tag: a tag is in the row when
    ``tag & mask == value`` (e.g. curve data (50xx,xxxx): value 0x50000000, mask 0xFF000000).
    """

    edition: str
    exact: dict[int, str]
    masked: tuple[tuple[int, int, str], ...]

    def code(self, tag: int) -> str | None:
        """The action code the table gives ``tag``, or None when the table does not list it."""
        tag = int(tag)
        if tag in self.exact:
            return self.exact[tag]
        return next((code for value, mask, code in self.masked if tag & mask == value), None)

    def __len__(self) -> int:
        return len(self.exact) + len(self.masked)


@functools.cache
def basic_profile() -> ProfileTable:
    """PS3.15 Table E.1-1 (``PROFILE_EDITION``), Basic Profile column, from ``PROFILE_MODULE``.

    Raises
    ------
    ValueError
        A row of the source is malformed, or one tag has two different codes.
    """
    source = importlib.import_module(PROFILE_MODULE)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for category, code in CATEGORY_CODES.items():
        for row in getattr(source, category):
            if len(row) == 2:
                tag = (row[0] << 16) | row[1]
                if exact.setdefault(tag, code) != code:
                    raise ValueError(f"Invalid profile row {Tag(tag)} - codes {exact[tag]} and "
                                     f"{code} in {PROFILE_MODULE}")
            elif len(row) == 4:
                masked.append(((row[0] << 16) | row[1], (row[2] << 16) | row[3], code))
            else:
                raise ValueError(f"Invalid profile row {row!r} in {PROFILE_MODULE}")
    return ProfileTable(PROFILE_EDITION, exact, tuple(masked))


def resolve(code: str, sequence: bool = False) -> Action:
    """The action a profile code stands for; compound codes by ``COMPOUND_CHOICE``, or for a
    sequence by ``SEQUENCE_CHOICE``."""
    if code in COMPOUND_CHOICE:
        return (SEQUENCE_CHOICE if sequence else COMPOUND_CHOICE)[code]
    try:
        return Action(code)
    except ValueError as e:
        raise ValueError(f"Invalid profile action code '{code}'") from e


@dataclass(frozen=True)
class UidMapper:
    """Consistent UID replacement: the same UID and key always give the same new UID (2.25.x).

    Exports use the catalog's key (``db.keys``): never written where the data goes.
    """

    key: bytes

    def __call__(self, uid: str) -> str:
        digest = hmac.new(self.key, str(uid).encode("ascii"), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def burned_in(ds: Dataset) -> bool:
    """True when the image says its pixels carry burned-in annotation (0028,0301 = YES)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


@dataclass
class Deidentifier:
    """Applies the Basic Profile; ``pseudonym`` becomes PatientName and PatientID.

    ``pixels_cleaned``: the caller states that burned-in annotation was removed from the pixels
    of these images (Clean Pixel Data Option); without it such images are refused.
    """

    uids: UidMapper
    pseudonym: str | None = None
    pixels_cleaned: bool = False
    table: ProfileTable = field(default_factory=basic_profile)

    def action(self, element: DataElement) -> Action:
        """What this de-identifier does to one element."""
        if element.tag.is_private:
            return Action.REMOVE
        code = self.table.code(element.tag)
        if code is None:
            return Action.KEEP
        sequence = element.VR == "SQ"
        action = resolve(code, sequence)
        if sequence and action is Action.REMOVE and code != "X" and not element.value:
            return Action.ZERO  # a compound-coded sequence already without items: Type 2 there
        return action

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (file meta rebuilt) and return it."""
        self._clean(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            ds.file_meta = self._file_meta(meta)
        if self.pseudonym is not None:
            ds.PatientName = self.pseudonym
            ds.PatientID = self.pseudonym
        if self.pixels_cleaned and burned_in(ds):
            ds.BurnedInAnnotation = "NO"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [
            f"PS3.15 {self.table.edition} Basic Application Confidentiality Profile",
            "UIDs remapped with a keyed hash; private attributes removed"]
        codes = [BASIC_PROFILE_CODE] + ([CLEAN_PIXEL_DATA_CODE] if self.pixels_cleaned else [])
        ds.DeidentificationMethodCodeSequence = Sequence([_code_item(*c) for c in codes])
        return ds

    def _file_meta(self, meta: FileMetaDataset) -> FileMetaDataset:
        """Only what identifies the object and its encoding; pydicom adds its own version."""
        clean = FileMetaDataset()
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                        "TransferSyntaxUID"):
            if keyword in meta:
                setattr(clean, keyword, meta[keyword].value)
        if "MediaStorageSOPInstanceUID" in clean:
            clean.MediaStorageSOPInstanceUID = self.uids(clean.MediaStorageSOPInstanceUID)
        return clean

    def _clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            action = self.action(ds[tag])
            if action is Action.REMOVE:
                del ds[tag]
            else:
                _HANDLERS[action](self, ds[tag])

    def _zero(self, element: DataElement) -> None:
        element.value = [] if element.VR == "SQ" else None

    def _dummy(self, element: DataElement) -> None:
        if element.VR == "SQ":
            for item in element.value or []:
                self._dummy_item(item)
        elif element.VR == "UI":
            self._uid(element)
        elif element.VR in DUMMY_BY_VR:
            element.value = DUMMY_BY_VR[element.VR]
        else:
            element.value = _DUMMY_BYTES

    def _dummy_item(self, item: Dataset) -> None:
        """Every value of a D sequence's item replaced: structure kept, content gone."""
        for tag in list(item.keys()):
            if tag.is_private:
                del item[tag]
            elif item[tag].VR == "UI":
                self._uid(item[tag], keep_standard=True)
            else:
                self._dummy(item[tag])

    def _uid(self, element: DataElement, keep_standard: bool = False) -> None:
        if element.VR != "UI":  # unknown VR (implicit, not in the dictionary): a dummy
            self._dummy(element)
            return
        if not element.value:
            return
        values = list(element.value) if element.VM > 1 else [element.value]
        mapped = [str(v) if keep_standard and str(v) in UID_dictionary else self.uids(str(v))
                  for v in values]
        element.value = mapped if element.VM > 1 else mapped[0]

    def _items(self, element: DataElement) -> None:
        if element.VR == "SQ":
            for item in element.value or []:
                self._clean(item)
        else:
            self._uid(element)

    def _keep(self, element: DataElement) -> None:
        if element.VR == "SQ":
            self._items(element)
        elif element.tag == TRACKING_ID and element.value:
            self._clean_text(element)
            element.value = _HEX_RUN.sub(lambda m: self._rekey(m.group()), str(element.value))
        elif element.tag == SEGMENT_LABEL and element.value:
            if not _DRAWING_LABEL.fullmatch(str(element.value)):
                element.value = _LABEL_DUMMY
        elif element.VR in _TEXT_VRS:
            self._clean_text(element)

    def _uid_run(self, match: re.Match[str]) -> str:
        run = match.group()
        return self.uids(run) if len(run) >= _UID_RUN_MIN else run

    def _rekey(self, token: str) -> str:
        """A hex token replaced by a keyed one of the same length."""
        return hmac.new(self.uids.key, token.encode(), hashlib.sha256).hexdigest()[:len(token)]

    def _clean_text(self, element: DataElement) -> None:
        """C: UIDs (whole or cut) inside a text value remapped; a value the remapped UIDs no
        longer fit in is replaced by the VR's dummy."""
        if element.VR not in _TEXT_VRS:
            self._dummy(element)
            return
        if not element.value:
            return
        values = list(element.value) if element.VM > 1 else [element.value]
        cleaned = [_UID_RUN.sub(self._uid_run, str(v)) for v in values]
        if cleaned == [str(v) for v in values]:
            return
        limit = _TEXT_VRS[element.VR]
        if limit is not None and any(len(v) > limit for v in cleaned):
            cleaned = [str(DUMMY_BY_VR[element.VR])] * len(cleaned)
        element.value = cleaned if element.VM > 1 else cleaned[0]


_HANDLERS: dict[Action, Callable[[Deidentifier, DataElement], None]] = {
    Action.ZERO: Deidentifier._zero, Action.DUMMY: Deidentifier._dummy,
    Action.UID: Deidentifier._uid,
    Action.ITEMS: Deidentifier._items, Action.KEEP: Deidentifier._keep,
    Action.CLEAN: Deidentifier._clean_text,
}


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def deidentify_file(source: Path, target: Path, deidentifier: Deidentifier) -> Path | None:
    """De-identify one DICOM file into ``target`` (temp name, then rename).

    Returns ``target``, or None when the image is left out: it carries burned-in annotation
    (BurnedInAnnotation YES) and ``deidentifier.pixels_cleaned`` is not set.
    """
    try:
        ds = pydicom.dcmread(source)
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise DicomInputError(f"DICOM file {source} - cannot be read for de-identification: "
                              f"{e}") from e
    if burned_in(ds) and not deidentifier.pixels_cleaned:
        return None
    deidentifier.apply(ds)
    target = Path(target)
    with atomic_path(target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return target
