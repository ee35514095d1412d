"""The one error an export raises for a whole-export problem (a case's problem is its failure)."""

from __future__ import annotations


class ExportError(Exception):
    """The export as a whole cannot go on: nothing matched, nothing written, a folder made with
    other settings. The message is one line naming the folder or the count."""
