"""Untrusted text made safe for a terminal or a log line: control characters escaped.

DICOM values, file names and error messages can hold newlines (a forged log line), ANSI escapes
(a repainted terminal) or raw bytes. ``printable`` is the one function that escapes them; the
command line, its tables and its error lines, and every log handler (``escape_logs``) use it.
Importable from dicom_io, db and flows.

Example
-------
>>> printable("1.2.3\\nINFO forged")
'1.2.3\\\\nINFO forged'
>>> printable("\\x1b[31mred")
'\\\\x1b[31mred'
"""

from __future__ import annotations

import logging

#: What ends a cut-short text.
ELLIPSIS = "..."


def printable(text: object, limit: int | None = None) -> str:
    """``str(text)`` with every non-printable character escaped as Python writes it.

    C0 and C1 controls, DEL, newlines and tabs, Unicode line separators, format characters
    (bidirectional overrides) and lone surrogates (undecodable bytes) become ``\\n``, ``\\x1b``,
    ``\\u202e``, ``\\udcff``...; backslashes stay as they are, so escaping twice changes nothing.

    Parameters
    ----------
    text
        Anything; its ``str()`` is escaped.
    limit
        At most this many characters of the escaped text are kept, ``...`` marking a cut.

    Returns
    -------
    str
        Text that prints on one line and moves no cursor.
    """
    value = str(text)
    if not value.isprintable():
        value = "".join(c if c.isprintable() else _escape(c) for c in value)
    if limit is not None and len(value) > limit:
        value = value[:max(limit - len(ELLIPSIS), 0)] + ELLIPSIS
    return value


def _escape(character: str) -> str:
    return character.encode("unicode_escape", "backslashreplace").decode("ascii")


class PrintableFilter(logging.Filter):
    """A handler filter that escapes each record's message (its arguments merged in) with
    ``printable``; the traceback of ``exc_info`` is left to the formatter, as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape the message in place; never drops a record."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format: the formatter reports it
            return True
        if not message.isprintable():
            record.msg, record.args = printable(message), None
        return True


def escape_logs(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger, where ours propagate) a
    ``PrintableFilter``, once; call where logging is configured."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, PrintableFilter) for f in handler.filters):
            handler.addFilter(PrintableFilter())
