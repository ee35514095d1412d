"""What an export folder was made with: format, filters, split and options (``export.json``).

A folder holds one export. Re-running with the same spec resumes it; another spec is refused,
since its cases would mix with the old ones, unless the caller starts the folder over.

Example
-------
>>> spec = ExportSpec.of("nifti", CatalogFilter(kind="line"), (1.0,), 0, False)  # doctest: +SKIP
>>> spec.check(Path("out"))  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from db.export.errors import ExportError
from db.queries import CatalogFilter
from dicom_io.files import write_text_atomic

SPEC_NAME = "export.json"


@dataclass(frozen=True)
class ExportSpec:
    """The settings that decide which cases a folder holds and how they are written."""

    format: str
    filters: dict[str, str] = field(default_factory=dict)  # the filter's set fields, as text
    split: tuple[float, ...] = (1.0,)
    seed: int = 0
    deidentify: bool = False
    nnunet_dataset: str | None = None  # nnU-Net exports only
    pixels_cleaned: bool = False  # de-identified DICOM: burned-in images declared clean

    @classmethod
    def of(cls, fmt: str, where: CatalogFilter, split: Sequence[float], seed: int,
           deidentify: bool, nnunet_dataset: str | None = None,
           pixels_cleaned: bool = False) -> ExportSpec:
        """The spec of one export call (filters left at ``None`` are not part of it)."""
        filters = {k: str(v.value if isinstance(v, enum.Enum) else v)
                   for k, v in asdict(where).items() if v is not None}
        return cls(str(fmt), filters, tuple(float(f) for f in split), int(seed),
                   bool(deidentify), nnunet_dataset, bool(pixels_cleaned))

    def as_json(self) -> dict:
        """The spec as the JSON document stored in the folder."""
        document = asdict(self)
        document["split"] = list(self.split)
        return document

    def check(self, folder: Path) -> None:
        """Raise ``ExportError`` when ``folder`` holds an export made with another spec (or by
        a version that kept no spec); a new or empty folder passes."""
        stored = read_spec(folder)
        if stored is None:
            if (Path(folder) / "manifest.csv").exists():
                raise ExportError(f"export folder {folder} was made by an older version (no "
                                  f"{SPEC_NAME}): use --force to start it over, or a new folder")
            return
        defaults = ExportSpec(format="").as_json()  # a setting added later: its default
        changed = differences({**defaults, **stored}, self.as_json())
        if changed:
            raise ExportError(f"export folder {folder} was made with other settings (differs "
                              f"in {', '.join(changed)}): use --force to start it over, or a "
                              f"new folder")

    def write(self, folder: Path) -> None:
        """Store the spec in ``folder`` (temp name, then rename)."""
        write_text_atomic(Path(folder) / SPEC_NAME, json.dumps(self.as_json(), indent=2) + "\n")


def read_spec(folder: Path) -> dict | None:
    """The spec stored in ``folder``, or None."""
    path = Path(folder) / SPEC_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"export folder {folder}: {SPEC_NAME} unreadable ({e})") from e


def differences(old: dict, new: dict) -> list[str]:
    """Names of the settings that differ (``filters.kind``, ``split``...), never their values."""
    changed = [k for k in sorted(set(old) | set(new)) if k != "filters" and old.get(k) != new.get(k)]
    old_f, new_f = old.get("filters") or {}, new.get("filters") or {}
    changed += [f"filters.{k}" for k in sorted(set(old_f) | set(new_f))
                if old_f.get(k) != new_f.get(k)]
    return changed
