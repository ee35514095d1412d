"""Errors of the PACS client. Messages name the PACS and the problem, never a patient."""

from __future__ import annotations


class PacsError(Exception):
    """Base class: talking to a PACS failed; the message says which PACS and why."""


class PacsUnavailableError(PacsError):
    """No TCP connection could be made to the PACS (not running, wrong host/port, firewall)."""


class AssociationRejectedError(PacsError):
    """The PACS rejected our association (e.g. unknown calling or called AE title)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class PacsTimeoutError(PacsError):
    """The PACS stopped answering within the DIMSE/network timeout, or aborted the association."""


class PacsBusyError(PacsError):
    """The PACS kept answering "out of resources" after every back-off retry."""


class QueryFailedError(PacsError):
    """A C-FIND/C-MOVE/C-GET/C-STORE ended with a failure status."""


class IncompleteDiscoveryError(QueryFailedError):
    """A discovery's answers did not add up after every re-query: the window is not done."""


class OutsidePacsHoursError(PacsError):
    """We are outside the configured PACS hours; ``seconds_until_open`` says when it opens."""

    def __init__(self, message: str, seconds_until_open: float) -> None:
        super().__init__(message)
        self.seconds_until_open = seconds_until_open


class RetrievalIncompleteError(PacsError):
    """Some expected instances did not arrive after every retry; nothing was counted for them."""
