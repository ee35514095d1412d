"""Numeric command-line options with bounds: argparse ``type=`` converters.

A value that is not a number, or out of its range, is argparse's one-line usage error naming the
option, before any work starts.

Example
-------
>>> parser.add_argument("--limit", type=bounded_int(1, 10**8))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from dicom_io.printable import printable

#: The seeds numpy's generators accept from the command line (32 bits).
SEED_MAX = 2**32 - 1
# Longest rejected text quoted back.
_QUOTED = 40


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: the text as an integer in ``lo..hi`` (inclusive)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{printable(text, _QUOTED)}' is not an integer") from None
        _check_range(value, text, lo, hi)
        return value

    return parse


def bounded_float(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: the text as a finite number in ``lo..hi`` (inclusive)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{printable(text, _QUOTED)}' is not a number") from None
        if math.isnan(value):
            raise argparse.ArgumentTypeError(f"'{printable(text, _QUOTED)}' is not a number")
        _check_range(value, text, lo, hi)
        return value

    return parse


def _check_range(value: float, text: str, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(
            f"{printable(text, _QUOTED)} is out of range: must be {lo}..{hi}")
