"""Initial catalog schema: runs, pseudonyms, studies, series, GSPS, annotations, SEGs, failures.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 03:03:58.144442
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('harvest_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pacs', sa.String(length=128), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.Enum('running', 'completed', 'failed', name='run_status', native_enum=False, length=16), nullable=False),
    sa.Column('found', sa.Integer(), nullable=False),
    sa.Column('retrieved', sa.Integer(), nullable=False),
    sa.Column('segmented', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pacs', 'window_start', 'window_end', name='uq_harvest_run_window')
    )
    op.create_table('patient_pseudonym',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('pseudonym', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id'),
    sa.UniqueConstraint('pseudonym')
    )
    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pseudonym', sa.String(length=32), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_patient_pseudonym'), ['patient_pseudonym'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_study_date'), ['study_date'], unique=False)

    op.create_table('failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.Enum('discover', 'retrieve', 'parse', 'load', 'segment', 'write_seg', 'store', 'catalog', 'export', name='failure_stage', native_enum=False, length=16), nullable=False),
    sa.Column('object_uid', sa.String(length=128), nullable=False),
    sa.Column('error_class', sa.String(length=128), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['harvest_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stage', 'object_uid', name='uq_failure_stage_object')
    )
    with op.batch_alter_table('failure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_failure_stage'), ['stage'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.Column('slices', sa.Integer(), nullable=False),
    sa.Column('spacing_slice_mm', sa.Float(), nullable=True),
    sa.Column('spacing_row_mm', sa.Float(), nullable=True),
    sa.Column('spacing_col_mm', sa.Float(), nullable=True),
    sa.Column('manufacturer', sa.String(length=64), nullable=True),
    sa.Column('storage_path', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_body_part'), ['body_part'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_id'), ['study_id'], unique=False)

    op.create_table('presentation_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('presentation_state', schema=None) as batch_op:
        batch_op.create_index('ix_presentation_state_id_uid', ['id', 'sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_presentation_state_series_id'), ['series_id'], unique=False)

    op.create_table('annotation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('presentation_state_id', sa.Integer(), nullable=False),
    sa.Column('gsps_index', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('slice_index', sa.Integer(), nullable=True),
    sa.Column('points_voxel', sa.JSON(), nullable=False),
    sa.Column('points_mm', sa.JSON(), nullable=False),
    sa.Column('length_mm', sa.Float(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('layer', sa.String(length=64), nullable=True),
    sa.Column('skip_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['presentation_state_id'], ['presentation_state.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('presentation_state_id', 'gsps_index', name='uq_annotation_gsps_index')
    )
    with op.batch_alter_table('annotation', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_id_gsps', ['id', 'presentation_state_id', 'gsps_index'], unique=False)
        batch_op.create_index(batch_op.f('ix_annotation_kind'), ['kind'], unique=False)

    op.create_table('segmentation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('ok', 'failed', 'needs-review', name='seg_status', native_enum=False, length=16), nullable=False),
    sa.Column('seg_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('segment_number', sa.Integer(), nullable=True),
    sa.Column('seg_path', sa.Text(), nullable=True),
    sa.Column('voxels', sa.Integer(), nullable=False),
    sa.Column('volume_ml', sa.Float(), nullable=False),
    sa.Column('long_axis_mm', sa.Float(), nullable=True),
    sa.Column('short_axis_mm', sa.Float(), nullable=True),
    sa.Column('bbox', sa.JSON(), nullable=True),
    sa.Column('mean_hu', sa.Float(), nullable=True),
    sa.Column('preview_path', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['annotation_id'], ['annotation.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('annotation_id', 'model_name', 'model_version', 'checkpoint_sha256', name='uq_segmentation_annotation_model')
    )
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segmentation_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_segmentation_kind_date_volume', ['kind', 'study_date', 'volume_ml'], unique=False)
        batch_op.create_index('ix_segmentation_kind_model_status_volume', ['kind', 'model_name', 'status', 'volume_ml'], unique=False)
        batch_op.create_index('ix_segmentation_seg_uid', ['seg_sop_instance_uid', 'segment_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_segmentation_series_id'), ['series_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('segmentation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segmentation_series_id'))
        batch_op.drop_index('ix_segmentation_seg_uid')
        batch_op.drop_index('ix_segmentation_kind_model_status_volume')
        batch_op.drop_index('ix_segmentation_kind_date_volume')
        batch_op.drop_index(batch_op.f('ix_segmentation_created_at'))

    op.drop_table('segmentation')
    with op.batch_alter_table('annotation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_kind'))
        batch_op.drop_index('ix_annotation_id_gsps')

    op.drop_table('annotation')
    with op.batch_alter_table('presentation_state', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_presentation_state_series_id'))
        batch_op.drop_index('ix_presentation_state_id_uid')

    op.drop_table('presentation_state')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_id'))
        batch_op.drop_index(batch_op.f('ix_series_body_part'))

    op.drop_table('series')
    with op.batch_alter_table('failure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_failure_stage'))

    op.drop_table('failure')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_study_date'))
        batch_op.drop_index(batch_op.f('ix_study_patient_pseudonym'))

    op.drop_table('study')
    op.drop_table('patient_pseudonym')
    op.drop_table('harvest_run')
