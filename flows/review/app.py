"""The review page: a FastAPI app over the catalog (served by ``sam2ct review``).

    GET  /                                  the queue, its first unscored case opened
    GET  /segmentation/{id}                 the queue and one case: slices, measures, flags
    GET  /segmentation/{id}/slice/{k}.png   slice k of the case (CT window, mask outline, drawing)
    POST /api/segmentations/{id}/review     {"score": "acceptable|minor|major|unusable",
                                             "note": "..."} -> the recorded score

The queue's filters are query parameters of the pages (``flagged``, ``unreviewed``, ``kind``,
``model``, ``since``, ``until``). Scores are recorded with the reviewer the app was started for
and the time; re-scoring adds to the history. No patient name or identifier, study or series
UID is on any page unless the app is made with ``show_identifiers``; requests must name a host
the app was started on (no DNS rebinding from a web page).

Example
-------
>>> app = create_app(engine, reviewer="jdoe", cache_dir=Path("/tmp/review"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.middleware.trustedhost import TrustedHostMiddleware

from db.records import ReviewScore
from db.reviews import (
    MAX_NOTE,
    QueueFilter,
    patient_ids,
    queue_choices,
    queue_item,
    record_review,
    review_history,
    review_queue,
)
from dicom_io.seg.preview import MASK_COLOUR, PROMPT_COLOUR
from flows.review.cases import SCORES, Case, Identifiers, case_of, uid_tail, when
from flows.review.slices import SliceRenderer, SliceUnavailable
from flows.templates import render

log = logging.getLogger(__name__)

#: Cases listed in the queue column at most (the filters narrow it).
QUEUE_LIMIT = 500
#: Hosts a request may name besides the one the app listens on.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ReviewConfig:
    """Who reviews, whether identifiers are shown, where slices are cached, which hosts."""

    reviewer: str
    cache_dir: Path
    show_identifiers: bool = False
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS


class ScoreIn(BaseModel):
    """A score posted by the page."""

    score: ReviewScore
    note: str | None = Field(default=None, max_length=MAX_NOTE)


def create_app(engine: Engine, reviewer: str, cache_dir: Path, *, show_identifiers: bool = False,
               hosts: tuple[str, ...] = LOOPBACK_HOSTS) -> FastAPI:
    """The review page's app over the catalog ``engine``, scoring as ``reviewer``."""
    config = ReviewConfig(reviewer, Path(cache_dir), show_identifiers,
                          tuple(dict.fromkeys((*hosts, *LOOPBACK_HOSTS))))
    renderer = SliceRenderer(config.cache_dir)
    app = FastAPI(title="SAM2CT review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))
    app.mount("/static", StaticFiles(packages=[("flows.review", "static")]), name="static")

    def filters(flagged: bool = False, unreviewed: bool = False, kind: str | None = None,
                model: str | None = None, since: date | None = None,
                until: date | None = None) -> QueueFilter:
        try:
            return QueueFilter(kind=kind or None, model=model or None, since=since, until=until,
                               flagged=flagged, unreviewed=unreviewed, with_mask=True)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e

    def case(segmentation_id: int) -> Case:
        item = queue_item(engine, segmentation_id)
        if item is None:
            raise HTTPException(404, f"no segmentation {segmentation_id} in the catalog")
        return _with_identifiers(engine, case_of(item), config.show_identifiers)

    @app.get("/", response_class=HTMLResponse)
    def queue(flagged: bool = False, unreviewed: bool = False,
              kind: str | None = None, model: str | None = None, since: date | None = None,
              until: date | None = None):
        f = filters(flagged, unreviewed, kind, model, since, until)
        items = review_queue(engine, f, QUEUE_LIMIT)
        first = next((i for i in items if i.score is None), items[0] if items else None)
        if first is None:
            return HTMLResponse(_page(engine, config, f, items, None))
        return RedirectResponse(f"/segmentation/{first.segmentation_id}{_query(f)}", 303)

    @app.get("/segmentation/{segmentation_id}", response_class=HTMLResponse)
    def segmentation(segmentation_id: int, flagged: bool = False,
                     unreviewed: bool = False, kind: str | None = None,
                     model: str | None = None, since: date | None = None,
                     until: date | None = None):
        f = filters(flagged, unreviewed, kind, model, since, until)
        items = review_queue(engine, f, QUEUE_LIMIT)
        return HTMLResponse(_page(engine, config, f, items, case(segmentation_id)))

    @app.get("/segmentation/{segmentation_id}/slice/{slice_index}.png")
    def slice_png(segmentation_id: int, slice_index: int):
        try:
            path = renderer.png(case(segmentation_id), slice_index)
        except SliceUnavailable as e:
            log.warning("review page: %s", e)
            raise HTTPException(404, str(e)) from e
        return FileResponse(path, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/segmentations/{segmentation_id}/review")
    def score(segmentation_id: int, body: ScoreIn) -> dict:
        try:
            entry = record_review(engine, segmentation_id, body.score, config.reviewer,
                                  body.note)
        except ValueError as e:
            raise HTTPException(404 if "no such" in str(e) else 400, str(e)) from e
        return {"segmentation_id": entry.segmentation_id, "score": entry.score.value,
                "reviewer": entry.reviewer, "reviewed_at": entry.reviewed_at.isoformat(),
                "note": entry.note}

    return app


def _with_identifiers(engine: Engine, case: Case, show: bool) -> Case:
    """The case with its patient and study identifiers when the page shows them."""
    if not show:
        return case
    item = case.item
    patient = patient_ids(engine, [item.patient_pseudonym]).get(item.patient_pseudonym)
    return replace(case, identifiers=Identifiers(patient, item.patient_pseudonym,
                                                 item.study_instance_uid,
                                                 item.series_instance_uid))


def _query(f: QueueFilter) -> str:
    """The queue's filters as a query string (``?...``; empty without filters)."""
    params = {"flagged": "true" if f.flagged else None,
              "unreviewed": "true" if f.unreviewed else None,
              "kind": f.kind, "model": f.model,
              "since": f.since.isoformat() if f.since else None,
              "until": f.until.isoformat() if f.until else None}
    kept = {k: v for k, v in params.items() if v}
    return "?" + urlencode(kept) if kept else ""


def _page(engine: Engine, config: ReviewConfig, f: QueueFilter, items: list,
          current: Case | None) -> str:
    """The page: filters, the queue, and the open case with its neighbours in the queue."""
    ids = [i.segmentation_id for i in items]
    previous = following = None
    if current is not None and current.id in ids:
        at = ids.index(current.id)
        previous = ids[at - 1] if at > 0 else None
        following = ids[at + 1] if at + 1 < len(ids) else None
    elif current is not None and ids:
        following = ids[0]
    query = _query(f)
    return render(
        "review.html.j2", items=items, current=current, filters=f, query=query,
        choices=queue_choices(engine), reviewer=config.reviewer, scores=SCORES,
        history=review_history(engine, current.id) if current else [],
        previous_url=f"/segmentation/{previous}{query}" if previous else "",
        next_url=f"/segmentation/{following}{query}" if following else "",
        limit=QUEUE_LIMIT, when=when, uid_tail=uid_tail,
        mask_colour=_hex(MASK_COLOUR), prompt_colour=_hex(PROMPT_COLOUR),
        show_identifiers=config.show_identifiers)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)
