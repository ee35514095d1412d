"""Each annotation gets its own series: a GSPS may be drawn on several CT series.

Adds ``annotation.series_id`` (FK series, ON DELETE CASCADE, indexed, NOT NULL), backfilled
with the series of the annotation's segmentations where it has any (they were recorded by the
job of the series the annotation is drawn on), else with its presentation state's series (the
best the catalog knew before). ``presentation_state.series_id`` is left as it is; from now on
the recorder keeps it as the first series the GSPS was recorded with.

On SQLite making the column NOT NULL rebuilds the ``annotation`` table (copy, drop, rename);
with foreign keys on, dropping it would cascade-delete every segmentation, so this migration
refuses to run unless foreign keys are off (db.migrate turns them off around migrations and
checks them again before committing).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_BACKFILL = (
    "UPDATE annotation SET series_id = COALESCE("
    "(SELECT min(s.series_id) FROM segmentation s WHERE s.annotation_id = annotation.id), "
    "(SELECT p.series_id FROM presentation_state p "
    "WHERE p.id = annotation.presentation_state_id))")


def _refuse_sqlite_foreign_keys() -> None:
    """Raise when SQLite enforces foreign keys: the table rebuild would cascade deletes."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise ValueError("Invalid SQLite connection for migration 0003 - foreign keys are on, "
                         "so rebuilding table annotation would delete its segmentations; "
                         "migrate with db.migrate.upgrade / downgrade")


def upgrade() -> None:
    _refuse_sqlite_foreign_keys()
    with op.batch_alter_table('annotation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('series_id', sa.Integer(), nullable=True))
    op.execute(_BACKFILL)
    with op.batch_alter_table('annotation', schema=None) as batch_op:
        batch_op.alter_column('series_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key('annotation_series_id_fkey', 'series', ['series_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index(batch_op.f('ix_annotation_series_id'), ['series_id'], unique=False)


def downgrade() -> None:
    _refuse_sqlite_foreign_keys()
    with op.batch_alter_table('annotation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_series_id'))
        batch_op.drop_constraint('annotation_series_id_fkey', type_='foreignkey')
        batch_op.drop_column('series_id')
