"""What a harvest run shows: a summary table, a Markdown page with previews, a progress bar,
and (for the demo) an HTML report. Only counts, UIDs of objects and images: never a patient's
name, ID or birth date.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from dicom_io.files import write_text_atomic

#: Previews embedded in the Markdown artifact (each a small PNG as a data URI).
MAX_PREVIEWS = 12
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


def markdown_page(summary: RunSummary) -> str:
    """The run's Markdown page: the table and up to ``MAX_PREVIEWS`` preview images."""
    lines = [f"# Harvest {summary.window_start} .. {summary.window_end} ({summary.pacs})", "",
             "| stage | count |", "| --- | ---: |"]
    lines += [f"| {r['stage']} | {r['count']} |" for r in summary.table()]
    if summary.warning:
        lines += ["", f"> **Warning:** {summary.warning}"]
    shown = [Path(p) for p in summary.previews if Path(p).is_file()][:MAX_PREVIEWS]
    if shown:
        lines += ["", "## Segmentations", ""]
        lines += [f"![{p.stem}]({_data_uri(p)})" for p in shown]
    return "\n".join(lines) + "\n"


def publish_summary(summary: RunSummary, key: str = "harvest-summary") -> None:
    """Create the table and Markdown artifacts of the current flow run."""
    create_table_artifact(summary.table(), key=key,
                          description=f"Harvest {summary.window_start}..{summary.window_end}")
    create_markdown_artifact(markdown_page(summary), key=f"{key}-report",
                             description="Summary and previews of the segmentations")


class Progress:
    """A progress artifact advanced stage by stage (0-100 %)."""

    def __init__(self, key: str = "harvest-progress") -> None:
        self._id: UUID = create_progress_artifact(0.0, key=key, description="Harvest progress")

    def set(self, percent: float, description: str | None = None) -> None:
        """Move the bar to ``percent``."""
        percent = max(0.0, min(100.0, percent))
        update_progress_artifact(self._id, percent, description)
        logging.getLogger(PROGRESS_LOGGER).debug(description or "", extra={"percent": percent})


def write_html_report(path: Path, summary: RunSummary, title: str = "SAM2CT harvest") -> Path:
    """A self-contained HTML report (previews linked relative to ``path``), written atomically."""
    path = Path(path)
    rows = "".join(f"<tr><td>{html.escape(str(r['stage']))}</td><td>{r['count']}</td></tr>"
                   for r in summary.table())
    figures = []
    for p in (Path(x) for x in summary.previews):
        src = os.path.relpath(p, path.parent) if p.is_absolute() else str(p)
        figures.append(f'<figure><img src="{html.escape(src)}" width="256">'
                       f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")
    warning = f"<p><b>Warning:</b> {html.escape(summary.warning)}</p>" if summary.warning else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>figure{display:inline-block;margin:6px}td{padding:2px 8px}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>window {summary.window_start} .. "
            f"{summary.window_end}, PACS {html.escape(summary.pacs)}</p>{warning}"
            f"<table>{rows}</table><h2>Segmentations</h2>{''.join(figures)}</body></html>\n")
    return write_text_atomic(path, page)
