"""workflows: jobs made of tasks with dependencies and conditions

A ``workflows`` table (the graph, the failure policy, the workflow's own status) and two columns
on ``jobs``: the workflow a job is a task of and the task's key, with a unique index on the pair.
Tasks waiting for their dependencies have the status WAITING, which needs no schema change.

Plain ``op.add_column``/``op.create_index`` on ``jobs``, which SQLite does in place: never
``batch_alter_table('jobs')``, which on SQLite copies the table and drops the ``job_events``
triggers of migration 0007.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_RUNNING = sa.text("status = 'RUNNING'")
_FINISHED = sa.text("status <> 'RUNNING'")


def upgrade() -> None:
    op.create_table('workflows',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('failure_policy', sa.String(length=16), nullable=False),
    sa.Column('execute_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('graph', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('schedule_id', sa.Uuid(), nullable=True),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=True),
    sa.Column('runs', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_workflows_schedule_id_schedules'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workflows')),
    sa.UniqueConstraint('tenant', 'idempotency_key', name='uq_workflows_tenant_idempotency_key'),
    sa.UniqueConstraint('schedule_id', 'scheduled_for', name='uq_workflows_schedule_id_scheduled_for'),
    )
    op.create_index('ix_workflows_tenant_created_at_id', 'workflows', ['tenant', 'created_at', 'id'], unique=False)
    op.create_index('ix_workflows_running', 'workflows', ['updated_at'], unique=False,
                    postgresql_where=_RUNNING, sqlite_where=_RUNNING)
    op.create_index('ix_workflows_finished', 'workflows', ['finished_at'], unique=False,
                    postgresql_where=_FINISHED, sqlite_where=_FINISHED)
    # Nullable without a default: PostgreSQL adds them without rewriting the table.
    op.add_column('jobs', sa.Column('workflow_id', sa.Uuid(), nullable=True))
    op.add_column('jobs', sa.Column('task_key', sa.String(length=64), nullable=True))
    op.create_index('ix_jobs_workflow_id_task_key', 'jobs', ['workflow_id', 'task_key'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_jobs_workflow_id_task_key', table_name='jobs')
    # SQLite 3.35+ drops a column in place (no table copy, so the triggers stay).
    op.drop_column('jobs', 'task_key')
    op.drop_column('jobs', 'workflow_id')
    op.drop_index('ix_workflows_finished', table_name='workflows')
    op.drop_index('ix_workflows_running', table_name='workflows')
    op.drop_index('ix_workflows_tenant_created_at_id', table_name='workflows')
    op.drop_table('workflows')
