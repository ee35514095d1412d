"""Automatic quality flags on each segmentation.

Adds ``segmentation.quality_flags`` (JSON list of ``{"code", "reason"}``) and
``segmentation.flag_count``; both stay NULL on rows made before the checks existed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quality_flags', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('flag_count', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.drop_column('flag_count')
        batch_op.drop_column('quality_flags')
