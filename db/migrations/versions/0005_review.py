"""Reviewers' scores of segmentations, with their history.

Adds table ``review`` (segmentation, score, note, reviewer, time); re-scoring adds a row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_SCORES = ('acceptable', 'minor', 'major', 'unusable')


def upgrade() -> None:
    op.create_table(
        'review',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('segmentation_id', sa.Integer(), nullable=False),
        sa.Column('score', sa.Enum(*_SCORES, name='review_score', native_enum=False, length=16),
                  nullable=False),
        sa.Column('note', sa.Text(), nullable=True),
        sa.Column('reviewer', sa.String(length=64), nullable=False),
        sa.Column('reviewed_at', sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(['segmentation_id'], ['segmentation.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_review_segmentation_time', 'review', ['segmentation_id', 'reviewed_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_review_segmentation_time', table_name='review')
    op.drop_table('review')
