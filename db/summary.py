"""The segmentation summary: study months and a full rebuild after bulk loads.

The table (db.models.SegmentationSummary) is kept exact by triggers (migration 0002). Bulk
loaders that disable those triggers (COPY of millions of rows) call :func:`rebuild` afterwards.

Example
-------
>>> month_key(date(2025, 3, 14))
202503
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import ColumnElement, Connection, Integer, cast, func, literal, select

from db.models import Segmentation, SegmentationSummary


def month_key(day: date | None) -> int:
    """The summary's study month of ``day``: YYYYMM, 0 when the date is unknown."""
    return 0 if day is None else day.year * 100 + day.month


def month_expression(dialect: str, column: ColumnElement) -> ColumnElement:
    """SQL computing :func:`month_key` of a DATE column on ``dialect`` (as the triggers do)."""
    if dialect == "postgresql":
        text = func.to_char(column, "YYYYMM")
    elif dialect == "sqlite":
        text = func.strftime("%Y%m", column)
    else:
        raise ValueError(f"Invalid catalog dialect '{dialect}' - only sqlite and postgresql "
                         "are supported")
    return func.coalesce(cast(text, Integer), literal(0))


def rebuild(connection: Connection) -> int:
    """Recompute the whole summary from ``segmentation`` (after a bulk load); return its rows."""
    seg = Segmentation.__table__
    month = month_expression(connection.dialect.name, seg.c.study_date)
    grouped = (select(seg.c.kind, seg.c.model_name, seg.c.model_version, seg.c.status,
                      month.label("study_month"), func.count(), func.sum(seg.c.volume_ml))
               .group_by(seg.c.kind, seg.c.model_name, seg.c.model_version, seg.c.status, month))
    table = SegmentationSummary.__table__
    connection.execute(table.delete())
    connection.execute(table.insert().from_select(
        ["kind", "model_name", "model_version", "status", "study_month", "n", "volume_sum"],
        grouped))
    return connection.execute(select(func.count()).select_from(table)).scalar_one()
