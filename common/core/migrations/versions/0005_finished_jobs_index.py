"""ix_jobs_finished: finished jobs by finish time, for retention

Retention deletes finished jobs (and, by cascade, their history) oldest first, a batch at a
time; this partial index holds only finished rows, so each batch reads its own rows and not
the whole table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_FINISHED = sa.text("status IN ('SUCCESS', 'FAILED', 'CANCELLED')")


def upgrade() -> None:
    if op.get_context().dialect.name != 'postgresql':
        op.create_index('ix_jobs_finished', 'jobs', ['finished_at'], unique=False, sqlite_where=_FINISHED)
        return
    # Built without blocking writes (a big table takes a while); repeatable if interrupted.
    with op.get_context().autocommit_block():
        op.drop_index('ix_jobs_finished', table_name='jobs', postgresql_concurrently=True, if_exists=True)
        op.create_index('ix_jobs_finished', 'jobs', ['finished_at'], unique=False, postgresql_where=_FINISHED,
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_jobs_finished', table_name='jobs')
