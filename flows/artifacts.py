"""What a harvest run shows: a summary table, a Markdown page, a progress bar, and an HTML
report (in the output folder's ``reports/``; the demo's over its whole catalog). Both pages group the run's segmentations by study and lesion, with a legend, each
one's prompt kind and encoding, measures, quality flags, latest score, and links to its SEG file
and its review page; they are rendered from Jinja2 templates (``flows/templates``). Only counts,
UIDs of objects and images: never a patient's name, ID or birth date.
"""

from __future__ import annotations

import base64
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from sqlalchemy import Engine

from db.reviews import QueueFilter, review_queue
from dicom_io.files import write_text_atomic
from dicom_io.printable import printable
from dicom_io.seg.preview import MASK_COLOUR, PROMPT_COLOUR
from flows.review import DEFAULT_PORT, page_url, review_url
from flows.review.cases import Case, case_of, group_studies, uid_tail
from flows.templates import render

#: Previews embedded in the Markdown artifact (each a small PNG as a data URI).
MAX_PREVIEWS = 12
#: Segmentations listed in the Markdown artifact at most (flagged first); the rest are counted.
MAX_MARKDOWN_CASES = 200
#: SEG paths per catalog query when a report selects its run's segmentations.
_PATHS_PER_QUERY = 500
#: ``Progress`` also logs here at DEBUG (``extra`` ``percent``): the command line draws its bar
#: from these records when the flow runs in its process.
PROGRESS_LOGGER = "flows.progress"


@dataclass
class RunSummary:
    """Counts of one harvest window, by stage; failures by the stage they happened in."""

    window_start: str
    window_end: str
    pacs: str
    found: int = 0
    already_done: int = 0
    retrieved_gsps: int = 0
    retrieved_series: int = 0
    segmented: int = 0
    failed_segments: int = 0
    skipped_annotations: int = 0
    failed_by_stage: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
    seg_paths: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    warning: str | None = None
    report: str | None = None  # the run's HTML report, once written
    #: (start, end) of every model call (several at once with several segment workers)
    model_spans: list[tuple[float, float]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Failed objects (any stage) plus failed segments."""
        return sum(self.failed_by_stage.values()) + self.failed_segments

    def table(self) -> list[dict[str, object]]:
        """Rows (stage, count) of the summary table."""
        rows: list[dict[str, object]] = [
            {"stage": "found (GSPS in window)", "count": self.found},
            {"stage": "already catalogued (skipped)", "count": self.already_done},
            {"stage": "retrieved GSPS", "count": self.retrieved_gsps},
            {"stage": "retrieved CT series", "count": self.retrieved_series},
            {"stage": "segmented", "count": self.segmented},
            {"stage": "failed segments (empty mask)", "count": self.failed_segments},
            {"stage": "annotations skipped (explained)", "count": self.skipped_annotations},
        ]
        rows += [{"stage": f"failed at {stage}", "count": n}
                 for stage, n in sorted(self.failed_by_stage.items())]
        return rows

    @property
    def model_busy_seconds(self) -> float:
        """Wall-clock seconds in which at least one model call ran (the union of the spans)."""
        busy, reach = 0.0, float("-inf")
        for start, end in sorted(self.model_spans):
            if end > reach:
                busy += end - max(start, reach)
                reach = end
        return busy

    def to_json(self) -> dict:
        """A JSON-ready dict (what the flows return and the CLI prints)."""
        out = asdict(self)
        del out["model_spans"]
        out["failed_by_stage"] = dict(self.failed_by_stage)
        out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        out["model_busy_s"] = round(self.model_busy_seconds, 3)
        out["failed"] = self.failed
        return out


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def report_cases(engine: Engine, seg_paths: Sequence[str] | None = None) -> list[Case]:
    """The segmentations a report shows: every one in the catalog, or those of these SEG files
    (a run's), flagged first."""
    if seg_paths is None:
        items = review_queue(engine)
    else:
        paths = sorted(set(seg_paths))
        items = [item for start in range(0, len(paths), _PATHS_PER_QUERY)
                 for item in review_queue(engine, QueueFilter(
                     seg_paths=tuple(paths[start:start + _PATHS_PER_QUERY])))]
    return [case_of(item) for item in items]


def _colours() -> dict[str, str]:
    return {name: "#" + "".join(f"{v:02x}" for v in rgb)
            for name, rgb in (("mask_colour", MASK_COLOUR), ("prompt_colour", PROMPT_COLOUR))}


def _context(summary: RunSummary, cases: Sequence[Case], title: str,
             review_command: str | None) -> dict:
    """What both report templates show."""
    return {"title": title, "summary": summary, "rows": summary.table(),
            "studies": group_studies(cases), "cases": cases,
            "flagged": sum(1 for c in cases if c.flags),
            "scored": sum(1 for c in cases if c.item.score),
            "review_url": review_url, "review_page": page_url(port=DEFAULT_PORT),
            "review_command": review_command or "sam2ct review", "uid_tail": uid_tail,
            **_colours()}


def markdown_page(summary: RunSummary, cases: Sequence[Case] = (),
                  review_command: str | None = None) -> str:
    """The run's Markdown page: the counts, a legend, and the segmentations grouped by study
    and lesion (at most ``MAX_MARKDOWN_CASES``; previews of the first ``MAX_PREVIEWS``). Without
    ``cases``, the previews of ``summary`` only."""
    shown = list(cases)[:MAX_MARKDOWN_CASES]
    previews = {c.id: _data_uri(Path(c.item.preview_path)) for c in shown
                if c.item.preview_path and Path(c.item.preview_path).is_file()}
    previews = dict(list(previews.items())[:MAX_PREVIEWS])
    gallery = [] if cases else [(Path(p).stem, _data_uri(Path(p))) for p in summary.previews
                                if Path(p).is_file()][:MAX_PREVIEWS]
    context = _context(summary, shown, f"Harvest {summary.window_start} .. "
                       f"{summary.window_end} ({summary.pacs})", review_command)
    return render("report.md.j2", **context, previews=previews, gallery=gallery,
                  left_out=len(cases) - len(shown))


def run_cases(summary: RunSummary, engine: Engine | None) -> Sequence[Case]:
    """The run's segmentations (those of its SEG files) for its pages; a catalog that cannot be
    read costs the pages their list, never the run."""
    if engine is None:
        return ()
    try:
        return report_cases(engine, summary.seg_paths)
    except Exception as exc:  # noqa: BLE001 - the report is the run's last word, not its end
        logging.getLogger(__name__).warning("run report without its segmentations: %s",
                                            printable(exc, 300))
        return ()


def review_command(catalog_url: str) -> str:
    """The command that opens the review page over this catalog (a password in the URL is
    masked)."""
    import shlex

    from sqlalchemy.engine import make_url

    try:
        shown = make_url(catalog_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: a catalog file path
        shown = catalog_url
    return f"sam2ct review --catalog {shlex.quote(shown)}"


def publish_summary(summary: RunSummary, key: str = "harvest-summary",
                    cases: Sequence[Case] = (), review: str | None = None) -> None:
    """Create the table and Markdown artifacts of the current flow run; the Markdown lists
    ``cases`` (the run's segmentations, :func:`run_cases`) and the ``review`` command."""
    create_table_artifact(summary.table(), key=key,
                          description=f"Harvest {summary.window_start}..{summary.window_end}")
    create_markdown_artifact(markdown_page(summary, cases, review), key=f"{key}-report",
                             description="Summary and segmentations by study and lesion")


class Progress:
    """A progress artifact advanced stage by stage (0-100 %)."""

    def __init__(self, key: str = "harvest-progress") -> None:
        self._id: UUID = create_progress_artifact(0.0, key=key, description="Harvest progress")

    def set(self, percent: float, description: str | None = None) -> None:
        """Move the bar to ``percent``."""
        percent = max(0.0, min(100.0, percent))
        update_progress_artifact(self._id, percent, description)
        logging.getLogger(PROGRESS_LOGGER).debug(description or "", extra={"percent": percent})


def write_html_report(path: Path, summary: RunSummary, title: str = "SAM2CT harvest",
                      cases: Sequence[Case] = (), review_command: str | None = None) -> Path:
    """A self-contained HTML report, written atomically: counts, legend, and ``cases`` grouped
    by study and lesion (previews and SEG files linked relative to ``path``). Without
    ``cases``, the previews of ``summary`` only."""
    path = Path(path)

    def link(target: str | None) -> str:
        if not target:
            return ""
        p = Path(target)
        return os.path.relpath(p, path.parent) if p.is_absolute() else str(p)

    gallery = [] if cases else [(Path(p).stem, link(p)) for p in summary.previews]
    page = render("report.html.j2", **_context(summary, cases, title, review_command),
                  link=link, gallery=gallery)
    return write_text_atomic(path, page)
