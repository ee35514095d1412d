"""Checks of untrusted DICOM input: bounded structure, decodable elements, finite numbers, UIDs.

Everything we read comes from a PACS or a folder we do not control. These checks turn a hostile
or broken object into one :class:`~dicom_io.errors.DicomInputError` (or a ``ValueError`` naming
the attribute, for the caller to wrap) instead of a crash, a hang or a non-finite result later.

Example
-------
>>> ds = pydicom.dcmread("pr.dcm")  # doctest: +SKIP
>>> check_structure(ds, "GSPS file pr.dcm")  # doctest: +SKIP
>>> finite_int("1e400", "ImageRotation")
Traceback (most recent call last):
ValueError: Invalid 'ImageRotation' value '1e400' - not a finite number
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicom_io.errors import DicomInputError
from dicom_io.printable import printable

logger = logging.getLogger(__name__)

#: Sequences nested deeper than this are refused (standard CT, SEG and GSPS objects nest < 8).
MAX_DEPTH = 16
#: Items of one sequence (an enhanced CT's per-frame groups: one per frame).
MAX_ITEMS = 20_000
#: Integers beyond this magnitude are refused (DICOM IS is 32-bit).
MAX_INT = 2**31 - 1

#: Characters of an error's message kept in ours.
MESSAGE_LIMIT = 300

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40


def shown(value: object) -> str:
    """A value for an error message: repr'd (control characters escaped) and cut short."""
    return _short.repr(value)


def described(error: BaseException) -> str:
    """An exception for an error message: its class and its message, escaped and cut short."""
    return f"{type(error).__name__}: {printable(error, MESSAGE_LIMIT)}"


def check_structure(ds: Dataset, what: str, max_depth: int = MAX_DEPTH,
                    max_items: int = MAX_ITEMS) -> None:
    """Decode every element of ``ds`` now and bound its sequences' depth and item counts.

    pydicom decodes element values when they are first used; a broken value would otherwise
    raise wherever that happens. Pixel data is not decoded.

    Raises
    ------
    DicomInputError
        Naming ``what`` and the element, when one cannot be decoded or the structure is too
        deep or too wide.
    """
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        for tag in list(dataset.keys()):
            if tag == 0x7FE00010:
                continue
            items = _sequence_items(dataset, tag, what)
            if items is None:
                continue
            if depth + 1 > max_depth:
                raise DicomInputError(f"{what} - sequences nested more than {max_depth} deep")
            if len(items) > max_items:
                raise DicomInputError(f"{what} - sequence {tag} has {len(items)} items (at "
                                      f"most {max_items} are read)")
            stack.extend((item, depth + 1) for item in items)


def _sequence_items(dataset: Dataset, tag: BaseTag, what: str) -> list[Dataset] | None:
    """The items of element ``tag`` if it is a sequence (None otherwise), decoding it. A private
    element that cannot be decoded is dropped (vendors' private data is never read)."""
    try:
        elem = dataset[tag]
    except Exception as e:  # noqa: BLE001 - any decoding error of hostile bytes
        if tag.is_private:
            logger.debug("%s: undecodable private element %s dropped", what, tag)
            del dataset[tag]
            return None
        raise DicomInputError(f"{what} - element {dataset.get_item(tag).tag} cannot be "
                              f"decoded: {described(e)}") from e
    return list(elem.value) if elem.VR == "SQ" else None


def finite_float(value: object, keyword: str) -> float:
    """``value`` as a finite float, or a ValueError naming ``keyword``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ValueError(f"Invalid '{keyword}' value {shown(value)} - not a number") from e
    if not math.isfinite(number):
        raise ValueError(f"Invalid '{keyword}' value {shown(value)} - not a finite number")
    return number


def finite_int(value: object, keyword: str) -> int:
    """``value`` as an int within 32 bits, or a ValueError naming ``keyword``."""
    number = finite_float(value, keyword)
    if abs(number) > MAX_INT:
        raise ValueError(f"Invalid '{keyword}' value {shown(value)} - beyond 32 bits")
    return int(number)


def finite_floats(values: Iterable[object], keyword: str) -> list[float]:
    """Each of ``values`` as a finite float (a ValueError naming ``keyword`` otherwise)."""
    return [finite_float(v, keyword) for v in values]


def within(value: float, low: float, high: float, keyword: str) -> float:
    """``value`` when ``low <= value <= high``, else a ValueError naming ``keyword``."""
    if not low <= value <= high:
        raise ValueError(f"Invalid '{keyword}' value {value:g} - must be within {low:g}.."
                         f"{high:g}")
    return value


def valid_uid(value: object, keyword: str) -> str:
    """``value`` when it is a well-formed UID (digits and dots, at most 64 characters)."""
    text = str(value or "")
    if not UID(text).is_valid:
        raise ValueError(f"Invalid '{keyword}' value {shown(text)} - not a UID")
    return text
