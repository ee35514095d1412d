"""GSPS -> annotations: the arrows, lines and outlines radiologists drew, and where they point.

See ../shared/docs/gsps-encodings.md for the encodings read here.
"""

from dicom_io.gsps.annotation import Annotation, AnnotationKind
from dicom_io.gsps.batch import mark_duplicates
from dicom_io.gsps.geometry import DisplayedArea, SpatialTransform, Units, display_to_pixel
from dicom_io.gsps.locate import LocatedAnnotation, locate
from dicom_io.gsps.reader import (
    GspsTarget,
    annotations_of,
    drawn_series,
    read_gsps,
    read_presentation_state,
    read_target,
)

__all__ = [
    "Annotation",
    "AnnotationKind",
    "DisplayedArea",
    "GspsTarget",
    "LocatedAnnotation",
    "SpatialTransform",
    "Units",
    "annotations_of",
    "display_to_pixel",
    "drawn_series",
    "locate",
    "mark_duplicates",
    "read_gsps",
    "read_presentation_state",
    "read_target",
]
