"""Errors raised for bad DICOM input. Messages name the object and the problem, never the patient."""


class DicomInputError(ValueError):
    """A DICOM object (file, series, GSPS) cannot be used; the message says which and why."""
