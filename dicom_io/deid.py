"""De-identification by the PS3.15 Basic Application Confidentiality Profile (Annex E, E.1-1).

The profile's action table is data (``BASIC_PROFILE``: keyword -> action code as the standard
writes it); the code only knows what each action means. UIDs are replaced consistently (a keyed
hash), so a SEG de-identified with the same key still references its de-identified CT.

Example
-------
>>> deid = Deidentifier(UidMapper(key=b"secret"), pseudonym="a1b2c3")
>>> clean = deid.apply(pydicom.dcmread("ct.dcm"))  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicom_io.errors import DicomInputError
from dicom_io.files import atomic_path, write_atomic


class Action(enum.StrEnum):
    """What the profile does to one attribute."""

    KEEP = "K"
    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    UID = "U"
    CLEAN = "C"


# Compound codes ("X/Z": remove, or empty where the IOD requires the attribute) resolved to the
# choice that keeps any IOD valid without knowing its type: never remove what may be required.
COMPOUND_CHOICE: dict[str, Action] = {
    "X/Z": Action.ZERO, "X/D": Action.DUMMY, "Z/D": Action.DUMMY, "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.UID,
}

# PS3.15 Table E.1-1, column "Basic Prof." (attributes the profile lists; others are kept).
BASIC_PROFILE: dict[str, str] = {
    "AccessionNumber": "Z", "AcquisitionComments": "X", "AcquisitionContextSequence": "X",
    "AcquisitionDate": "X/Z", "AcquisitionDateTime": "X/Z/D",
    "AcquisitionDeviceProcessingDescription": "X/D", "AcquisitionProtocolDescription": "X",
    "AcquisitionTime": "X/Z", "ActualHumanPerformersSequence": "X",
    "AdditionalPatientHistory": "X", "AdmissionID": "X", "AdmittingDate": "X",
    "AdmittingDiagnosesCodeSequence": "X", "AdmittingDiagnosesDescription": "X",
    "AdmittingTime": "X", "AffectedSOPInstanceUID": "X", "Allergies": "X", "Arbitrary": "X",
    "AuthorObserverSequence": "X", "BranchOfService": "X", "CassetteID": "X",
    "CommentsOnThePerformedProcedureStep": "X", "ConcatenationUID": "U",
    "ConfidentialityConstraintOnPatientDataDescription": "X", "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X", "ContentDate": "Z/D",
    "ContentSequence": "X", "ContentTime": "Z/D", "ContextGroupExtensionCreatorUID": "U",
    "ContrastBolusAgent": "Z/D", "ContributionDescription": "X", "CountryOfResidence": "X",
    "CreatorVersionUID": "U", "CurrentPatientLocation": "X", "CurveDate": "X",
    "CurveTime": "X", "CustodialOrganizationSequence": "X", "DataSetTrailingPadding": "X",
    "DerivationDescription": "X", "DetectorID": "X", "DeviceSerialNumber": "X/Z/D",
    "DeviceUID": "U", "DigitalSignatureUID": "X", "DigitalSignaturesSequence": "X",
    "DimensionOrganizationUID": "U", "DischargeDiagnosisDescription": "X",
    "DistributionAddress": "X", "DistributionName": "X", "DoseReferenceUID": "U",
    "EndAcquisitionDateTime": "X/D", "EthnicGroup": "X", "ExpectedCompletionDateTime": "X",
    "FailedSOPInstanceUIDList": "U", "FiducialUID": "U",
    "FillerOrderNumberImagingServiceRequest": "Z", "FrameComments": "X",
    "FrameOfReferenceUID": "U", "GantryID": "X", "GeneratorID": "X",
    "GraphicAnnotationSequence": "D", "HumanPerformerName": "X",
    "HumanPerformerOrganization": "X", "IconImageSequence": "X", "IdentifyingComments": "X",
    "ImageComments": "X", "ImagePresentationComments": "X", "ImagingServiceRequestComments": "X",
    "Impressions": "X", "InstanceCoercionDateTime": "X", "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D", "InstanceCreatorUID": "U", "InstitutionAddress": "X",
    "InstitutionCodeSequence": "X/Z/D", "InstitutionName": "X/Z/D",
    "InstitutionalDepartmentName": "X", "InstitutionalDepartmentTypeCodeSequence": "X",
    "InsurancePlanIdentification": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X",
    "InterpretationApproverSequence": "X", "InterpretationAuthor": "X",
    "InterpretationDiagnosisDescription": "X", "InterpretationIDIssuer": "X",
    "InterpretationRecorder": "X", "InterpretationText": "X", "InterpretationTranscriber": "X",
    "IrradiationEventUID": "U", "IssuerOfAdmissionID": "X", "IssuerOfPatientID": "X",
    "IssuerOfServiceEpisodeID": "X", "LargePaletteColorLookupTableUID": "U",
    "LastMenstrualDate": "X", "MAC": "X", "MediaStorageSOPInstanceUID": "U",
    "MedicalAlerts": "X", "MedicalRecordLocator": "X", "MilitaryRank": "X",
    "ModifiedAttributesSequence": "X", "ModifiedImageDescription": "X", "ModifyingDeviceID": "X",
    "NameOfPhysiciansReadingStudy": "X", "NamesOfIntendedRecipientsOfResults": "X",
    "Occupation": "X", "OperatorIdentificationSequence": "X", "OperatorsName": "X/Z/D",
    "OrderCallbackPhoneNumber": "X", "OrderEnteredBy": "X", "OrderEntererLocation": "X",
    "OriginalAttributesSequence": "X", "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X", "ParticipantSequence": "X", "PatientAddress": "X",
    "PatientAge": "X", "PatientBirthDate": "Z", "PatientBirthName": "X",
    "PatientBirthTime": "X", "PatientComments": "X", "PatientID": "Z",
    "PatientInstitutionResidence": "X", "PatientInsurancePlanCodeSequence": "X",
    "PatientMotherBirthName": "X", "PatientName": "Z",
    "PatientPrimaryLanguageCodeSequence": "X", "PatientPrimaryLanguageModifierCodeSequence": "X",
    "PatientReligiousPreference": "X", "PatientSex": "Z", "PatientSexNeutered": "X/Z",
    "PatientSize": "X", "PatientState": "X", "PatientTelephoneNumbers": "X",
    "PatientTransportArrangements": "X", "PatientWeight": "X", "PerformedLocation": "X",
    "PerformedProcedureStepDescription": "X", "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X", "PerformedProcedureStepID": "X",
    "PerformedProcedureStepStartDate": "X", "PerformedProcedureStepStartTime": "X",
    "PerformedStationAETitle": "X", "PerformedStationGeographicLocationCodeSequence": "X",
    "PerformedStationName": "X", "PerformedStationNameCodeSequence": "X",
    "PerformingPhysicianIdentificationSequence": "X", "PerformingPhysicianName": "X",
    "PersonAddress": "X", "PersonIdentificationCodeSequence": "D", "PersonName": "D",
    "PersonTelephoneNumbers": "X", "PhysicianApprovingInterpretation": "X",
    "PhysiciansOfRecord": "X", "PhysiciansOfRecordIdentificationSequence": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z", "PlateID": "X", "PreMedication": "X",
    "PregnancyStatus": "X", "ProtocolName": "X/D", "ReasonForStudy": "X",
    "ReasonForTheImagingServiceRequest": "X", "ReferencedDigitalSignatureSequence": "X",
    "ReferencedFrameOfReferenceUID": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "ReferencedImageSequence": "X/Z/U*", "ReferencedPatientAliasSequence": "X",
    "ReferencedPatientSequence": "X", "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "ReferencedSOPInstanceMACSequence": "X", "ReferencedSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U", "ReferencedStudySequence": "X/Z",
    "ReferringPhysicianAddress": "X", "ReferringPhysicianIdentificationSequence": "X",
    "ReferringPhysicianName": "Z", "ReferringPhysicianTelephoneNumbers": "X",
    "RegionOfResidence": "X", "RelatedFrameOfReferenceUID": "U",
    "RequestAttributesSequence": "X", "RequestedContrastAgent": "X",
    "RequestedProcedureComments": "X", "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X", "RequestedProcedureLocation": "X",
    "RequestedSOPInstanceUID": "U", "RequestingPhysician": "X", "RequestingService": "X",
    "ResponsibleOrganization": "X", "ResponsiblePerson": "X", "ResultsComments": "X",
    "ResultsDistributionListSequence": "X", "ResultsIDIssuer": "X", "ReviewerName": "X/Z",
    "ScheduledHumanPerformersSequence": "X", "ScheduledPatientInstitutionResidence": "X",
    "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledPerformingPhysicianName": "X", "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepEndDate": "X", "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepLocation": "X", "ScheduledProcedureStepStartDate": "X",
    "ScheduledProcedureStepStartTime": "X", "ScheduledStationAETitle": "X",
    "ScheduledStationGeographicLocationCodeSequence": "X", "ScheduledStationName": "X",
    "ScheduledStationNameCodeSequence": "X", "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X", "SeriesDate": "X/D", "SeriesDescription": "X",
    "SeriesInstanceUID": "U", "SeriesTime": "X/D", "ServiceEpisodeDescription": "X",
    "ServiceEpisodeID": "X", "SmokingStatus": "X", "SOPInstanceUID": "U",
    "SourceImageSequence": "X/Z/U*", "SpecialNeeds": "X", "SpecimenUID": "U",
    "StationName": "X/Z/D", "StorageMediaFileSetUID": "U", "StudyComments": "X",
    "StudyDate": "Z", "StudyDescription": "X", "StudyID": "Z", "StudyIDIssuer": "X",
    "StudyInstanceUID": "U", "StudyTime": "Z", "SynchronizationFrameOfReferenceUID": "U",
    "TemplateExtensionCreatorUID": "U", "TemplateExtensionOrganizationUID": "U",
    "TextComments": "X", "TextString": "X", "TimezoneOffsetFromUTC": "X", "TopicAuthor": "X",
    "TopicKeywords": "X", "TopicSubject": "X", "TopicTitle": "X", "TrackingUID": "U",
    "TransactionUID": "U", "UID": "U", "VerifyingObserverIdentificationCodeSequence": "Z",
    "VerifyingObserverName": "D", "VerifyingObserverSequence": "D",
    "VerifyingOrganization": "X", "VisitComments": "X",
}

# Repeating groups the table lists by mask: curves (50xx,xxxx) and overlay data / comments.
_CURVE_GROUP_MASK = 0x5000
_OVERLAY_REMOVED_ELEMENTS = (0x3000, 0x4000)  # (60xx,3000) Overlay Data, (60xx,4000) Comments

# Dummy values by VR for action D (valid for any attribute of that VR).
DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS",
    "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS", "LT": "ANONYMOUS",
    "ST": "ANONYMOUS", "UT": "ANONYMOUS", "AE": "ANONYMOUS", "IS": "0", "DS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "AS": "000Y",
}

# Code for "Basic Application Confidentiality Profile" (CID 7050).
_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")


def resolve(code: str) -> Action:
    """The action a profile code stands for (compound codes by ``COMPOUND_CHOICE``)."""
    if code in COMPOUND_CHOICE:
        return COMPOUND_CHOICE[code]
    try:
        return Action(code)
    except ValueError as e:
        raise ValueError(f"Invalid profile action code '{code}'") from e


def profile_by_tag(profile: dict[str, str] = BASIC_PROFILE) -> dict[int, Action]:
    """The profile keyed by tag; every keyword must be in pydicom's data dictionary."""
    table: dict[int, Action] = {}
    for keyword, code in profile.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"Invalid profile keyword '{keyword}' - not a DICOM attribute")
        table[int(tag)] = resolve(code)
    return table


@dataclass(frozen=True)
class UidMapper:
    """Consistent UID replacement: the same UID and key always give the same new UID (2.25.x)."""

    key: bytes

    def __call__(self, uid: str) -> str:
        digest = hmac.new(self.key, str(uid).encode("ascii"), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    @classmethod
    def from_file(cls, path: Path) -> UidMapper:
        """The key stored at ``path``, created (random, 32 bytes) the first time."""
        path = Path(path)
        if not path.exists():
            write_atomic(path, os.urandom(32))
        return cls(path.read_bytes())


@dataclass
class Deidentifier:
    """Applies the Basic Profile to datasets; ``pseudonym`` becomes PatientName and PatientID."""

    uids: UidMapper
    pseudonym: str | None = None
    table: dict[int, Action] = field(default_factory=profile_by_tag)

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it."""
        self._clean(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uids(meta.MediaStorageSOPInstanceUID)
        if self.pseudonym is not None:
            ds.PatientName = self.pseudonym
            ds.PatientID = self.pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 Basic Application Confidentiality Profile"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        return ds

    def _clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            self._element(ds, tag)

    def _element(self, ds: Dataset, tag: BaseTag) -> None:
        if tag.is_private or _removed_by_group(tag):
            del ds[tag]
            return
        element = ds[tag]
        action = self.table.get(int(tag), Action.KEEP)
        if action in (Action.REMOVE, Action.CLEAN):
            del ds[tag]
        elif element.VR == "SQ" and action is Action.ZERO:
            element.value = []
        elif element.VR == "SQ":  # K, D and U* on sequences: keep, clean every item
            for item in element.value or []:
                self._clean(item)
        elif action is Action.ZERO:
            element.value = None
        elif action is Action.DUMMY:
            element.value = DUMMY_BY_VR.get(element.VR)
        elif action is Action.UID and element.value:
            values = element.value if element.VM > 1 else [element.value]
            mapped = [self.uids(v) for v in values]
            element.value = mapped if element.VM > 1 else mapped[0]


def _removed_by_group(tag: BaseTag) -> bool:
    """Curves (50xx) and overlay data / comments (60xx,3000 / 4000) are removed."""
    if tag.group & 0xFF00 == _CURVE_GROUP_MASK:
        return True
    return tag.group & 0xFF00 == 0x6000 and tag.element in _OVERLAY_REMOVED_ELEMENTS


def deidentify_file(source: Path, target: Path, deidentifier: Deidentifier) -> Path:
    """De-identify one DICOM file into ``target`` (temp name, then rename); return ``target``."""
    try:
        ds = pydicom.dcmread(source)
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise DicomInputError(f"DICOM file {source} - cannot be read for de-identification: "
                              f"{e}") from e
    deidentifier.apply(ds)
    target = Path(target)
    with atomic_path(target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return target
