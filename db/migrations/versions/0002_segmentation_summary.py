"""Segmentation summary kept by triggers; first-page index and fewer joins for listings.

Copies each segmentation's GSPS UID and graphic index onto it (listings then join only series
and study). Adds ``segmentation_summary`` (count and total volume per kind, model, status and study month),
kept exact by row triggers on ``segmentation`` inside the writing transaction, and backfilled
from the existing rows. Replaces the (kind, study_date, volume_ml) index by
(kind, study_date, id, volume_ml), whose order is the queries' ORDER BY (study_date, id).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_KEY = "kind, model_name, model_version, status, study_month"
_UPDATE_WHEN = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in (
    "kind", "model_name", "model_version", "status", "study_date", "volume_ml"))

# PostgreSQL: one plpgsql function: subtract the old row (UPDATE, DELETE), add the new one
_PG_FUNCTION = f"""
CREATE FUNCTION segmentation_summary_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO segmentation_summary AS s ({_KEY}, n, volume_sum)
        VALUES (OLD.kind, OLD.model_name, OLD.model_version, OLD.status,
                COALESCE(to_char(OLD.study_date, 'YYYYMM')::integer, 0), -1, -OLD.volume_ml)
        ON CONFLICT ({_KEY}) DO UPDATE
        SET n = s.n + EXCLUDED.n, volume_sum = s.volume_sum + EXCLUDED.volume_sum;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO segmentation_summary AS s ({_KEY}, n, volume_sum)
        VALUES (NEW.kind, NEW.model_name, NEW.model_version, NEW.status,
                COALESCE(to_char(NEW.study_date, 'YYYYMM')::integer, 0), 1, NEW.volume_ml)
        ON CONFLICT ({_KEY}) DO UPDATE
        SET n = s.n + EXCLUDED.n, volume_sum = s.volume_sum + EXCLUDED.volume_sum;
    END IF;
    RETURN NULL;
END
$$
"""
_PG_CLEAR = """
CREATE FUNCTION segmentation_summary_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM segmentation_summary;
    RETURN NULL;
END
$$
"""
_PG_TRIGGERS = (
    "CREATE TRIGGER segmentation_summary_insert_delete AFTER INSERT OR DELETE ON segmentation "
    "FOR EACH ROW EXECUTE FUNCTION segmentation_summary_apply()",
    f"CREATE TRIGGER segmentation_summary_update AFTER UPDATE ON segmentation FOR EACH ROW "
    f"WHEN ({_UPDATE_WHEN}) EXECUTE FUNCTION segmentation_summary_apply()",
    # TRUNCATE fires no row trigger; TRUNCATE ... CASCADE from study reaches segmentation
    "CREATE TRIGGER segmentation_summary_truncate AFTER TRUNCATE ON segmentation "
    "FOR EACH STATEMENT EXECUTE FUNCTION segmentation_summary_clear()",
)


def _sqlite_add(row: str, sign: str) -> str:
    """SQLite trigger statement adding (sign '+') or subtracting ('-') one row's values."""
    return (f"INSERT INTO segmentation_summary ({_KEY}, n, volume_sum) "
            f"VALUES ({row}.kind, {row}.model_name, {row}.model_version, {row}.status, "
            f"COALESCE(CAST(strftime('%Y%m', {row}.study_date) AS INTEGER), 0), "
            f"{sign}1, {sign}{row}.volume_ml) "
            f"ON CONFLICT ({_KEY}) DO UPDATE "
            f"SET n = n + excluded.n, volume_sum = volume_sum + excluded.volume_sum;")


_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER segmentation_summary_insert AFTER INSERT ON segmentation "
    f"BEGIN {_sqlite_add('NEW', '')} END",
    f"CREATE TRIGGER segmentation_summary_delete AFTER DELETE ON segmentation "
    f"BEGIN {_sqlite_add('OLD', '-')} END",
    f"CREATE TRIGGER segmentation_summary_update AFTER UPDATE ON segmentation "
    f"WHEN {_UPDATE_WHEN} BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '')} END",
)

_MONTH = {"postgresql": "COALESCE(to_char(study_date, 'YYYYMM')::integer, 0)",
          "sqlite": "COALESCE(CAST(strftime('%Y%m', study_date) AS INTEGER), 0)"}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in _MONTH:
        raise ValueError(f"Invalid catalog dialect '{dialect}' - only sqlite and postgresql "
                         "are supported")
    op.create_table('segmentation_summary',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('ok', 'failed', 'needs-review', name='seg_status', native_enum=False, length=16), nullable=False),
    sa.Column('study_month', sa.Integer(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('volume_sum', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'model_name', 'model_version', 'status', 'study_month')
    )
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gsps_sop_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('annotation_index', sa.Integer(), nullable=True))
        batch_op.drop_index('ix_segmentation_kind_date_volume')
        batch_op.create_index('ix_segmentation_kind_date_id_volume', ['kind', 'study_date', 'id', 'volume_ml'], unique=False)
    op.execute("UPDATE segmentation SET "
               "annotation_index = (SELECT a.gsps_index FROM annotation a "
               "WHERE a.id = segmentation.annotation_id), "
               "gsps_sop_instance_uid = (SELECT p.sop_instance_uid FROM annotation a "
               "JOIN presentation_state p ON p.id = a.presentation_state_id "
               "WHERE a.id = segmentation.annotation_id)")
    op.execute(f"INSERT INTO segmentation_summary ({_KEY}, n, volume_sum) "
               f"SELECT kind, model_name, model_version, status, {_MONTH[dialect]}, count(*), "
               f"sum(volume_ml) FROM segmentation "
               f"GROUP BY kind, model_name, model_version, status, {_MONTH[dialect]}")
    statements = ((_PG_FUNCTION, _PG_CLEAR, *_PG_TRIGGERS) if dialect == "postgresql"
                  else _SQLITE_TRIGGERS)
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("segmentation_summary_insert_delete", "segmentation_summary_update",
                     "segmentation_summary_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON segmentation")
        op.execute("DROP FUNCTION IF EXISTS segmentation_summary_apply()")
        op.execute("DROP FUNCTION IF EXISTS segmentation_summary_clear()")
    else:
        for name in ("segmentation_summary_insert", "segmentation_summary_delete",
                     "segmentation_summary_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.drop_index('ix_segmentation_kind_date_id_volume')
        batch_op.create_index('ix_segmentation_kind_date_volume', ['kind', 'study_date', 'volume_ml'], unique=False)
        batch_op.drop_column('annotation_index')
        batch_op.drop_column('gsps_sop_instance_uid')
    op.drop_table('segmentation_summary')
