"""C-STORE of our objects (SEGs, or test data) to the PACS, one association for many files.

Example
-------
>>> report = store_files(pacs, local, [Path("seg.dcm")])  # doctest: +SKIP
>>> report.stored
1
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_io.pacs.association import (
    BUSY_STATUSES,
    build_context,
    open_association,
    retry_with_backoff,
)
from dicom_io.pacs.errors import PacsBusyError, PacsTimeoutError
from dicom_io.pacs.settings import LocalAE, PacsSettings

logger = logging.getLogger(__name__)


@dataclass
class StoreReport:
    """Outcome of storing files: counts and, per failed file, the reason."""

    stored: int = 0
    warnings: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        """True when every file was accepted."""
        return not self.failed


def store_files(pacs: PacsSettings, local: LocalAE, paths: Sequence[Path],
                on_progress: Callable[[Path], None] | None = None) -> StoreReport:
    """C-STORE ``paths`` to the PACS, keeping each file's transfer syntax.

    Unreadable files are reported, not sent. "Out of resources" (:class:`PacsBusyError`) and a
    lost association (:class:`PacsTimeoutError`) are retried with back-off
    (:func:`~dicom_io.pacs.association.retry_with_backoff`), each retry sending only the files
    not yet stored; when they outlast it, they raise.
    """
    report = StoreReport()
    datasets = []
    for path in paths:
        try:
            datasets.append((Path(path), dcmread(path)))
        except (OSError, InvalidDicomError) as e:
            report.failed[str(path)] = f"not a readable DICOM file: {e}"
    contexts = {}
    for _, ds in datasets:
        contexts.setdefault(ds.SOPClassUID, set()).add(ds.file_meta.TransferSyntaxUID)
    if not datasets:
        return report
    requested = [build_context(cls, sorted(ts)) for cls, ts in contexts.items()][:128]
    pending = deque(datasets)

    def attempt() -> None:
        with open_association(pacs, local, requested) as assoc:
            while pending:
                path, ds = pending[0]
                _store_one(pacs, assoc, path, ds, report)
                pending.popleft()
                if on_progress is not None:
                    on_progress(path)

    retry_with_backoff(pacs, attempt)
    return report


def _store_one(pacs: PacsSettings, assoc, path: Path, ds, report: StoreReport) -> None:
    try:
        status = assoc.send_c_store(ds)
    except ValueError as e:  # no accepted context for this class/transfer syntax
        report.failed[str(path)] = str(e)
        return
    if not status:
        raise PacsTimeoutError(f"PACS {pacs.address}: C-STORE of {path.name} got no response")
    code = status.Status
    if code in BUSY_STATUSES:
        raise PacsBusyError(f"PACS {pacs.address}: C-STORE out of resources (0x{code:04X})")
    if code == 0x0000:
        report.stored += 1
    elif code & 0xF000 == 0xB000:
        report.stored += 1
        report.warnings += 1
    else:
        report.failed[str(path)] = f"status 0x{code:04X}"
