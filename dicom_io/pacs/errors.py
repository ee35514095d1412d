"""Errors of the PACS client. Messages name the PACS and the problem, never a patient.

Each error says whether it is ``transient`` (trying again later may work: no connection, a
timeout, a busy PACS) and, once a retry loop gave up on it, that it was ``retried``: no caller
retries it again (see :func:`dicom_io.pacs.association.retry_with_backoff`, the one retry policy).
"""

from __future__ import annotations


class PacsError(Exception):
    """Base class: talking to a PACS failed; the message says which PACS and why."""

    #: whether trying again later may succeed
    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: set by the retry loop that gave up on this error: nothing retries it again
        self.retried = False


class PacsUnavailableError(PacsError):
    """No TCP connection could be made to the PACS (not running, wrong host/port, firewall)."""

    transient = True


class AssociationRejectedError(PacsError):
    """The PACS rejected our association (e.g. unknown calling or called AE title)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class PacsTimeoutError(PacsError):
    """The PACS stopped answering within the DIMSE/network timeout, or aborted the association."""

    transient = True


class PacsBusyError(PacsError):
    """The PACS kept answering "out of resources" after every back-off retry."""

    transient = True


class QueryFailedError(PacsError):
    """A C-FIND/C-MOVE/C-GET/C-STORE ended with a failure status."""


class MoveDestinationError(QueryFailedError):
    """The PACS does not know our AE title (or our host and port) as a C-MOVE destination."""


class IncompleteDiscoveryError(QueryFailedError):
    """A discovery's answers did not add up after every re-query: the window is not done."""


class OutsidePacsHoursError(PacsError):
    """We are outside the configured PACS hours; ``seconds_until_open`` says when it opens."""

    def __init__(self, message: str, seconds_until_open: float) -> None:
        super().__init__(message)
        self.seconds_until_open = seconds_until_open


class RetrievalIncompleteError(PacsError):
    """Some expected instances did not arrive after every retry; nothing was counted for them."""


class StoragePortError(PacsError):
    """Our storage SCP cannot listen on its port (in use, or not ours to bind)."""


def worth_retrying(error: BaseException) -> bool:
    """True for a transient PACS error that no retry loop has given up on yet."""
    return isinstance(error, PacsError) and error.transient and not error.retried
