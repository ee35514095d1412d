"""Seeded mutations of real and synthetic DICOM inputs, for the fuzz tests.

A mutation takes one file and writes a hostile variant of it: an attribute set to a non-finite,
huge, negative, empty or control-character value, an element deleted or its VR made unknown, a
sequence emptied, repeated thousands of times or nested thousands deep, bytes flipped, the file
cut short. The same seed gives the same cases. ``python tests/fuzz_inputs.py GSPS... --out DIR``
writes a batch for a look by hand.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: Attributes a GSPS reader or CT loader computes with: half the value mutations aim at them.
TARGETS = (
    "ImageRotation", "ImageHorizontalFlip", "DisplayedAreaTopLeftHandCorner",
    "DisplayedAreaBottomRightHandCorner", "PresentationPixelSpacing", "GraphicData",
    "NumberOfGraphicPoints", "GraphicType", "GraphicAnnotationUnits", "AnchorPoint",
    "ReferencedFrameNumber", "ReferencedSOPInstanceUID", "ReferencedSeriesSequence",
    "GraphicAnnotationSequence", "GraphicObjectSequence", "TextObjectSequence",
    "UnformattedTextValue", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "CompoundGraphicInstanceID", "GraphicDimensions", "PixelSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "Rows", "Columns",
    "SliceThickness", "BitsAllocated", "PixelRepresentation", "SOPClassUID", "GraphicLayer",
    "BoundingBoxTopLeftHandCorner", "BoundingBoxBottomRightHandCorner", "NumberOfFrames",
)

_NUMBERS = ("inf", "-inf", "nan", "1e308", "-1e308", "1e300", "0", "-1", "4294967296",
            "99999999999999999999", "", "1\\2\\3\\4\\5")
_TEXTS = ("\x1b[31mred\x1b[0m", "line\nforged INFO line", "\x00\x01\x02\x7f", "é" * 3,
          "x" * 70_000, "", "1.2.3\n4", "-1")
_NUMERIC_VRS = {"DS", "IS", "FL", "FD", "US", "SS", "UL", "SL", "UV", "SV"}


@dataclass(frozen=True)
class Case:
    """One mutated file and what was done to it."""

    path: Path
    source: Path
    mutation: str


def _elements(ds: Dataset) -> Iterator[tuple[Dataset, DataElement]]:
    """Every element of ``ds``, nested ones included (file meta left out)."""
    for elem in ds:
        yield ds, elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def _raw(elem: DataElement, value: object) -> DataElement:
    """``elem`` holding ``value`` whatever its VR allows (written as given)."""
    out = DataElement(elem.tag, elem.VR, value, validation_mode=config.IGNORE)
    return out


def _set_value(ds: Dataset, rng: random.Random) -> str:
    holder, elem = _pick(ds, rng)
    if elem.VR == "SQ":
        return _mutate_sequence(holder, elem, rng)
    pool = _NUMBERS if elem.VR in _NUMERIC_VRS or rng.random() < 0.3 else _TEXTS
    value = rng.choice(pool)
    if elem.VR in {"FL", "FD"}:
        value = _float_of(value, elem.VR)
    elif elem.VR in _NUMERIC_VRS - {"DS", "IS"}:
        value = _int_of(value, elem.VR)
    holder[elem.tag] = _raw(elem, value)
    return f"{elem.keyword or elem.tag} = {str(value)[:40]!r}"


def _float_of(text: str, vr: str) -> float:
    try:
        value = float(text.split("\\")[0] or "nan")
    except ValueError:
        return float("nan")
    return value if vr == "FD" or abs(value) < 3e38 else math.copysign(math.inf, value)


def _int_of(text: str, vr: str) -> int:
    """An integer at or past the edge of ``vr``'s range (written truncated by pydicom)."""
    limits = {"US": (0, 65535), "SS": (-32768, 32767), "UL": (0, 2**32 - 1),
              "SL": (-2**31, 2**31 - 1), "UV": (0, 2**64 - 1), "SV": (-2**63, 2**63 - 1)}
    lo, hi = limits[vr]
    return hi if text.startswith(("1e", "4", "9", "inf")) else lo


def _mutate_sequence(holder: Dataset, elem: DataElement, rng: random.Random) -> str:
    items = list(elem.value)
    choice = rng.randrange(3)
    if choice == 0 or not items:
        holder[elem.tag].value = Sequence([])
        return f"{elem.keyword} emptied"
    if choice == 1:
        holder[elem.tag].value = Sequence([copy.deepcopy(items[0]) for _ in range(1500)])
        return f"{elem.keyword} x1500 items"
    holder[elem.tag].value = Sequence([Dataset()] + items)
    return f"{elem.keyword} with an empty first item"


def _delete(ds: Dataset, rng: random.Random) -> str:
    holder, elem = _pick(ds, rng)
    del holder[elem.tag]
    return f"{elem.keyword or elem.tag} deleted"


def _pick(ds: Dataset, rng: random.Random) -> tuple[Dataset, DataElement]:
    every = [(h, e) for h, e in _elements(ds) if e.tag != 0x7FE00010]
    aimed = [(h, e) for h, e in every if e.keyword in TARGETS]
    return rng.choice(aimed if aimed and rng.random() < 0.6 else every)


DatasetMutation = Callable[[Dataset, random.Random], str]
_DATASET_MUTATIONS: tuple[DatasetMutation, ...] = (_set_value, _set_value, _set_value, _delete)


# --- byte level -------------------------------------------------------------------------------

def _flip_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    start = min(len(out) - 1, 132 + rng.randrange(max(1, len(out) - 132)))
    for _ in range(rng.randint(1, 8)):
        out[min(len(out) - 1, start + rng.randrange(64))] = rng.randrange(256)
    return bytes(out), f"bytes flipped near {start}"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(128, max(129, len(data)))
    return data[:cut], f"cut at {cut} of {len(data)} bytes"


def _unknown_vr(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One explicit VR of the dataset renamed 'GL' (no such VR)."""
    spots = [i for vr in (b"DS", b"FL", b"CS", b"IS", b"US", b"SQ", b"LO") for i in
             _find_all(data, vr) if i > 140]
    if not spots:
        return _flip_bytes(data, rng)
    at = rng.choice(spots)
    return data[:at] + b"GL" + data[at + 2:], f"VR at {at} made 'GL'"


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, at = [], data.find(needle)
    while at >= 0:
        out.append(at)
        at = data.find(needle, at + 1)
    return out


def _deep_private(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A private sequence nested ``depth`` deep appended after the last element (explicit VR
    little endian, undefined lengths)."""
    depth = rng.choice((200, 3000))
    creator = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 4) + b"FUZZ"
    open_ = struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data + creator + open_ * depth + close * depth, f"private sequence {depth} deep"


ByteMutation = Callable[[bytes, random.Random], tuple[bytes, str]]
_BYTE_MUTATIONS: tuple[ByteMutation, ...] = (_flip_bytes, _truncate, _unknown_vr, _deep_private)


# --- cases ------------------------------------------------------------------------------------

def mutate(source: Path, out: Path, rng: random.Random) -> Case:
    """Write one mutated copy of ``source`` at ``out``."""
    if rng.random() < 0.7:
        ds = pydicom.dcmread(source)
        what = "; ".join(rng.choice(_DATASET_MUTATIONS)(ds, rng)
                         for _ in range(rng.choice((1, 1, 2))))
        with config.disable_value_validation():
            ds.save_as(out, enforce_file_format=False)
        return Case(out, source, what)
    data, what = rng.choice(_BYTE_MUTATIONS)(source.read_bytes(), rng)
    out.write_bytes(data)
    return Case(out, source, what)


def cases(sources: list[Path], out_dir: Path, count: int, seed: int) -> list[Case]:
    """``count`` mutated files of ``sources`` (round robin) under ``out_dir``; a mutation that
    pydicom itself cannot write is replaced by a byte-level one."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(count):
        source = sources[n % len(sources)]
        target = out_dir / f"case-{n:04d}.dcm"
        try:
            made.append(mutate(source, target, rng))
        except (ValueError, TypeError, OverflowError, OSError, struct.error):
            data, what = _flip_bytes(source.read_bytes(), rng)
            target.write_bytes(data)
            made.append(Case(target, source, what))
    return made


def main() -> None:  # pragma: no cover - a tool for looking by hand
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for case in cases(args.files, args.out, args.count, args.seed):
        print(f"{case.path.name}: {case.source.name}: {case.mutation}")


if __name__ == "__main__":  # pragma: no cover
    main()
