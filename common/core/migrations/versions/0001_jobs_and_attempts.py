"""jobs and attempts

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('execute_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('timeout_seconds', sa.Float(), nullable=False),
    sa.Column('misfire_grace_seconds', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('dispatch_token', sa.BigInteger(), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('executor', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_jobs_idempotency_key'))
    )
    op.create_index('ix_jobs_due', 'jobs', ['execute_at'], unique=False, postgresql_where=sa.text("status = 'SCHEDULED'"), sqlite_where=sa.text("status = 'SCHEDULED'"))
    op.create_index('ix_jobs_execute_at_id', 'jobs', ['execute_at', 'id'], unique=False)
    op.create_index('ix_jobs_lease', 'jobs', ['lease_until'], unique=False, postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING', 'RETRYING')"), sqlite_where=sa.text("status IN ('QUEUED', 'RUNNING', 'RETRYING')"))
    op.create_index('ix_jobs_status_execute_at_id', 'jobs', ['status', 'execute_at', 'id'], unique=False)
    op.create_index('ix_jobs_type_execute_at_id', 'jobs', ['type', 'execute_at', 'id'], unique=False)
    op.create_table('job_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('dispatch_token', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('executor', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_attempts_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_attempts')),
    sa.UniqueConstraint('job_id', 'attempt', name='uq_job_attempts_job_id_attempt')
    )


def downgrade() -> None:
    op.drop_table('job_attempts')
    op.drop_index('ix_jobs_type_execute_at_id', table_name='jobs')
    op.drop_index('ix_jobs_status_execute_at_id', table_name='jobs')
    op.drop_index('ix_jobs_lease', table_name='jobs', postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING', 'RETRYING')"), sqlite_where=sa.text("status IN ('QUEUED', 'RUNNING', 'RETRYING')"))
    op.drop_index('ix_jobs_execute_at_id', table_name='jobs')
    op.drop_index('ix_jobs_due', table_name='jobs', postgresql_where=sa.text("status = 'SCHEDULED'"), sqlite_where=sa.text("status = 'SCHEDULED'"))
    op.drop_table('jobs')
