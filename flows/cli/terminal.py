"""What the command line shows a person at a terminal: argparse types for enumerations and dates,
tables that fit the terminal, and progress bars.

- Enumerations (``--kind``, ``--status``, ``--format``...) take their values in any case; a value
  that is none of them is one usage line listing the valid ones.
- Dates are ``YYYY-MM-DD``; anything else is one usage line ("... is not a date (YYYY-MM-DD)").
- Tables (the ``table`` format on stdout) are for reading: long UIDs and paths are shortened in the
  middle or at the front, and the columns that do not fit the terminal (``COLUMNS``, else the
  terminal's width, else 80) are left out and named on stderr; ``--wide`` shows everything.
- Progress bars go to stderr, and only when stderr is a terminal and ``--no-progress`` was not
  given: a pipe or a log file gets none.

Example
-------
>>> parser.add_argument("--kind", **one_of(["line", "arrow"]))  # doctest: +SKIP
>>> with progress("segment", total=3, unit="GSPS") as bar:  # doctest: +SKIP
...     bar.update()
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, Any

from dicom_io.printable import escape_logs, printable

if TYPE_CHECKING:
    import pandas as pd
    from tqdm import tqdm

# Longest rejected text quoted back in a usage error.
_QUOTED = 40
#: The longest text cell a fitted table shows whole (longer ones are shortened).
CELL_CHARS = 24
#: A UID (digits and dots) longer than this shows its head and tail only: ``1.2.826…4711``.
UID_CHARS = 12
_UID = re.compile(r"[0-9]+(\.[0-9]+){2,}")
#: The bar of a flow that reports percent (``follow_flow``).
PERCENT_BAR = "{desc} {percentage:3.0f}%|{bar}| [{elapsed}]"
#: A step without a count: its name, then how long it took.
STEP_BAR = "{desc} [{elapsed}]"
#: How often a drawn bar is redrawn though nothing moved (its clock ticks).
TICK_SECONDS = 1.0


# -- argument types ---------------------------------------------------------------------------

def one_of(values: Iterable[str]) -> dict[str, Any]:
    """``type=`` and ``choices=`` for ``add_argument``: one of ``values``, in any case.

    Parameters
    ----------
    values
        The valid values, as the program spells them (what the parsed argument holds).

    Returns
    -------
    dict
        Keyword arguments for ``ArgumentParser.add_argument`` (help and shell completion list
        the values; a wrong one is a usage error listing them).
    """
    canonical = {value.lower(): value for value in values}
    listed = ", ".join(canonical.values())

    def parse(text: str) -> str:
        try:
            return canonical[text.strip().lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"'{printable(text, _QUOTED)}' is not one of: {listed}") from None

    return {"type": parse, "choices": tuple(canonical.values())}


def iso_date(text: str) -> date:
    """An argparse type: ``YYYY-MM-DD`` as a date; anything else one usage line."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{printable(text, _QUOTED)} is not a date (YYYY-MM-DD)") from None


# -- tables -----------------------------------------------------------------------------------

def _ellipsis() -> str:
    """``…`` where stdout can encode it, else ``...``."""
    try:
        "…".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "…"


def shorten(text: str, limit: int = CELL_CHARS, mark: str = "…") -> str:
    """``text`` for a table cell: a UID as head and tail, a path as its end, other text cut."""
    if _UID.fullmatch(text) and len(text) > UID_CHARS:
        return f"{text[:7]}{mark}{text[-4:]}"
    if len(text) <= limit:
        return text
    if "/" in text or "\\" in text:
        return mark + text[len(mark) - limit:]
    return text[:limit - len(mark)] + mark


def table_text(frame: pd.DataFrame, *, wide: bool = False, width: int | None = None,
               first: Sequence[str] = ()) -> tuple[str, list[str]]:
    """``frame`` as a text table (its text escaped with ``printable``).

    Parameters
    ----------
    frame
        The rows to show.
    wide
        Every column, every cell whole.
    width
        Columns the table may take (default: the terminal's, ``COLUMNS`` first, else 80).
    first
        Columns a person reads first: they lead the table (those present, in this order).

    Returns
    -------
    tuple
        The table's text (no final newline), and the columns left out to fit ``width``.
    """
    if frame.empty:
        return "(no rows)", []
    cells = frame.map(lambda value: printable(value) if isinstance(value, str) else value)
    if wide:
        return cells.to_string(index=False), []
    mark = _ellipsis()
    cells = cells.map(lambda value: shorten(value, mark=mark) if isinstance(value, str) else value)
    order = [c for c in first if c in cells.columns]
    cells = cells[order + [c for c in cells.columns if c not in order]]
    width = width or shutil.get_terminal_size().columns
    keep = _columns_within(cells, width)
    text = cells[keep].to_string(index=False)
    while len(keep) > 1 and _widest(text) > width:
        keep.pop()
        text = cells[keep].to_string(index=False)
    return text, [c for c in cells.columns if c not in keep]


def _columns_within(cells: pd.DataFrame, width: int) -> list[str]:
    """The leading columns whose rendered widths (plus two spaces each) add up within ``width``;
    at least one."""
    keep, used = [], 0
    for column in cells.columns:
        used += _widest(cells[[column]].to_string(index=False)) + 2
        if keep and used > width + 2:
            break
        keep.append(column)
    return keep


def _widest(text: str) -> int:
    return max(map(len, text.splitlines()), default=0)


def print_table(frame: pd.DataFrame, *, wide: bool = False, first: Sequence[str] = ()) -> None:
    """Print ``frame`` on stdout fitted to the terminal (``table_text``); the columns left out
    are named in one line on stderr."""
    text, hidden = table_text(frame, wide=wide, first=first)
    sys.stdout.write(text + "\n")
    if hidden:
        names = ", ".join(hidden[:4]) + (", ..." if len(hidden) > 4 else "")
        print(f"{len(hidden)} column(s) left out to fit the terminal ({names}): --wide shows "
              "them", file=sys.stderr)


def refuse_binary_on_terminal(fmt: str) -> None:
    """A binary format is never written to a terminal: raise ``CommandError`` when stdout is
    one (a file or a pipe is fine, as with ``gzip -c``)."""
    from flows.cli import CommandError

    if _isatty(sys.stdout):
        raise CommandError(f"{fmt} is binary and stdout is a terminal: give --out FILE "
                           "(or redirect stdout to a file)")


def add_wide_argument(parser: argparse.ArgumentParser) -> None:
    """``--wide``: a table with every column and whole cells."""
    parser.add_argument("--wide", action="store_true",
                        help="table: every column, whole UIDs and paths (default: fit the "
                             "terminal)")


# -- progress ---------------------------------------------------------------------------------

def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar (there is none anyway when stderr is not a terminal)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr (none when stderr is not a terminal)")


def shows_progress(args: argparse.Namespace | None = None) -> bool:
    """Whether progress bars are drawn: stderr is a terminal and ``--no-progress`` not given."""
    quiet = bool(getattr(args, "no_progress", False))
    return not quiet and _isatty(sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@contextmanager
def progress(desc: str, total: int | None = None, unit: str = "it", *, show: bool | None = None,
             bar_format: str | None = None) -> Iterator[tqdm]:
    """A tqdm bar on stderr while the block runs; log lines printed above it, not through it.

    Parameters
    ----------
    desc
        What is being done, e.g. ``segment``.
    total
        How many ``unit`` there are (None: unknown, or set ``bar.total`` later).
    show
        Whether to draw it (default ``shows_progress()``); when not, the bar is a silent no-op
        (``update`` and friends still work).
    bar_format
        tqdm's format, e.g. ``STEP_BAR`` or ``PERCENT_BAR``.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    drawn = shows_progress() if show is None else show
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not drawn,
               dynamic_ncols=True, bar_format=bar_format)
    if not drawn:
        with bar:
            yield bar
        return
    with logging_redirect_tqdm(), bar, _ticking(bar):
        escape_logs()  # the redirecting handler escapes control characters too
        yield bar


@contextmanager
def _ticking(bar: tqdm, seconds: float = TICK_SECONDS) -> Iterator[None]:
    """Redraw ``bar`` every ``seconds`` from a daemon thread: its clock runs while a long step
    reports nothing."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(seconds):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="progress-tick", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


def advance(bar: tqdm) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that moves ``bar`` there."""
    def moved(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return moved


@contextmanager
def step(desc: str, show: bool | None = None) -> Iterator[None]:
    """One line for a step without a count (``desc [elapsed]``), completed when it ends."""
    with progress(desc, show=show, bar_format=STEP_BAR):
        yield


class _FlowBar(logging.Handler):
    """Moves a 0-100 bar as a flow's ``Progress`` records arrive (``flows.artifacts``)."""

    def __init__(self, bar: tqdm, desc: str) -> None:
        super().__init__(logging.DEBUG)
        self.bar, self.desc = bar, desc

    def emit(self, record: logging.LogRecord) -> None:
        percent = getattr(record, "percent", None)
        if percent is None:
            return
        self.bar.set_description_str(f"{self.desc}: {printable(record.getMessage(), 60)}",
                                     refresh=False)
        self.bar.update(round(percent) - self.bar.n)


@contextmanager
def follow_flow(desc: str, show: bool | None = None) -> Iterator[None]:
    """A percent bar moved by the progress a flow running in this process reports (the
    ``Progress`` artifact of ``flows.artifacts`` also logs it at DEBUG on ``PROGRESS_LOGGER``);
    a flow run elsewhere moves nothing."""
    with progress(f"{desc}: starting", total=100, unit="%", show=show,
                  bar_format=PERCENT_BAR) as bar:
        if bar.disable:
            yield
            return
        from flows.artifacts import PROGRESS_LOGGER

        log = logging.getLogger(PROGRESS_LOGGER)
        saved = log.level, log.propagate
        handler = _FlowBar(bar, desc)
        log.setLevel(logging.DEBUG)
        log.propagate = False  # the bar shows them; not also as log lines
        log.addHandler(handler)
        try:
            yield
        finally:
            log.removeHandler(handler)
            log.setLevel(saved[0])
            log.propagate = saved[1]
