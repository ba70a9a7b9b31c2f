"""jobs.trace_context: the W3C Trace Context of the request that created the job

Set only with ``CHRONOQ_TRACING=on`` (``common/infra/tracing.py``): the scanner publishes a job
long after its create, from the row, so the row carries the create span's ``traceparent`` (and
``tracestate``) to the dispatch's record headers. NULL otherwise.

A plain ``op.add_column``, which SQLite supports: never ``batch_alter_table('jobs')``, which on
SQLite copies the table and drops the ``job_events`` triggers of migration 0007.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable without a default: PostgreSQL adds it without rewriting the table.
    op.add_column('jobs', sa.Column('trace_context', sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no table copy, so the triggers stay).
    op.drop_column('jobs', 'trace_context')
