"""The PACS client: C-ECHO, C-FIND, C-MOVE/C-GET into a staging area, C-STORE, storage SCP.

Split by protocol layer like pynetdicom: ``settings`` (who and where), ``association`` (politeness,
timeouts), ``query`` (C-ECHO/C-FIND/discovery), ``storage`` (our SCP), ``retrieve`` (C-MOVE/C-GET with
verification), ``store`` (C-STORE).
"""

from dicom_io.pacs.association import Gate, gate_for, open_association
from dicom_io.pacs.errors import (
    AssociationRejectedError,
    IncompleteDiscoveryError,
    MoveDestinationError,
    OutsidePacsHoursError,
    PacsBusyError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
    QueryFailedError,
    RetrievalIncompleteError,
    StoragePortError,
    worth_retrying,
)
from dicom_io.pacs.query import (
    Discovery,
    InstanceMatch,
    QueryLevel,
    SeriesMatch,
    StudyMatch,
    discover_gsps,
    discover_window,
    echo,
    find,
    find_in_window,
    find_instances,
    find_series,
    find_studies,
)
from dicom_io.pacs.retrieve import RetrievalReport, SubOperations, retrieve
from dicom_io.pacs.settings import (
    Backoff,
    LocalAE,
    PacsHours,
    PacsSettings,
    RetrieveMethod,
    Timeouts,
    TlsOptions,
    WindowPolicy,
)
from dicom_io.pacs.storage import Delivery, StagingWriter, StorageSCP, StoreOutcome, staged_path
from dicom_io.pacs.store import StoreReport, store_files

__all__ = [
    "AssociationRejectedError", "Backoff", "Delivery", "discover_gsps", "discover_window",
    "Discovery", "echo", "find", "IncompleteDiscoveryError",
    "find_in_window", "find_instances", "find_series", "find_studies", "Gate", "gate_for",
    "PacsHours", "InstanceMatch", "LocalAE", "MoveDestinationError", "open_association",
    "OutsidePacsHoursError",
    "PacsBusyError", "PacsError", "PacsSettings", "PacsTimeoutError", "PacsUnavailableError",
    "QueryFailedError", "QueryLevel", "RetrievalIncompleteError", "RetrievalReport", "retrieve",
    "RetrieveMethod", "SeriesMatch", "staged_path", "StagingWriter", "StorageSCP", "store_files",
    "StoragePortError", "StoreOutcome", "StoreReport", "StudyMatch", "SubOperations", "Timeouts",
    "TlsOptions", "WindowPolicy", "worth_retrying",
]
