"""schedules; jobs become occurrences, reruns and SKIPPED

A schedule table; each job may be an occurrence of a schedule, identified by (schedule_id,
scheduled_for) so that no two scanners make it twice. Jobs gain the trigger's original time,
the rerun's attempt base and run count, the overlap policy of their schedule, and the finished
index counts SKIPPED as finished.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_FINISHED_BEFORE = sa.text("status IN ('SUCCESS', 'FAILED', 'CANCELLED')")
_FINISHED = sa.text("status IN ('SUCCESS', 'FAILED', 'CANCELLED', 'SKIPPED')")
_ACTIVE = sa.text("NOT paused")


def upgrade() -> None:
    op.create_table('schedules',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('cron', sa.String(length=200), nullable=True),
    sa.Column('interval_seconds', sa.Float(), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dst_gap', sa.String(length=16), nullable=False),
    sa.Column('dst_fold', sa.String(length=16), nullable=False),
    sa.Column('jitter_seconds', sa.Float(), nullable=False),
    sa.Column('catchup_policy', sa.String(length=16), nullable=False),
    sa.Column('catchup_limit', sa.Integer(), nullable=False),
    sa.Column('catchup_per_second', sa.Float(), nullable=False),
    sa.Column('overlap_policy', sa.String(length=16), nullable=False),
    sa.Column('job', sa.JSON(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('made_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules'))
    )
    op.create_index('ix_schedules_next_fire_at', 'schedules', ['next_fire_at'], unique=False,
                    postgresql_where=_ACTIVE, sqlite_where=_ACTIVE)
    op.create_index('ix_schedules_tenant_created_at', 'schedules', ['tenant', 'created_at'], unique=False)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('schedule_id', sa.Uuid(), nullable=True))
        batch.add_column(sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('overlap', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('original_execute_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('attempt_base', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('runs', sa.Integer(), server_default='1', nullable=False))
        batch.create_foreign_key('fk_jobs_schedule_id_schedules', 'schedules', ['schedule_id'], ['id'],
                                 ondelete='SET NULL')
        batch.create_unique_constraint('uq_jobs_schedule_id_scheduled_for', ['schedule_id', 'scheduled_for'])
    op.drop_index('ix_jobs_finished', table_name='jobs')
    op.create_index('ix_jobs_finished', 'jobs', ['finished_at'], unique=False,
                    postgresql_where=_FINISHED, sqlite_where=_FINISHED)


def downgrade() -> None:
    op.drop_index('ix_jobs_finished', table_name='jobs')
    op.create_index('ix_jobs_finished', 'jobs', ['finished_at'], unique=False,
                    postgresql_where=_FINISHED_BEFORE, sqlite_where=_FINISHED_BEFORE)
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('uq_jobs_schedule_id_scheduled_for', type_='unique')
        batch.drop_constraint('fk_jobs_schedule_id_schedules', type_='foreignkey')
        for column in ('runs', 'attempt_base', 'original_execute_at', 'overlap', 'scheduled_for', 'schedule_id'):
            batch.drop_column(column)
    op.drop_index('ix_schedules_tenant_created_at', table_name='schedules')
    op.drop_index('ix_schedules_next_fire_at', table_name='schedules')
    op.drop_table('schedules')
