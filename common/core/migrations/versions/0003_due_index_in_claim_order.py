"""ix_jobs_due in the claim's order: (execute_at, priority DESC) of SCHEDULED jobs

The scanner claims ``... WHERE status = 'SCHEDULED' ORDER BY execute_at, priority DESC LIMIT n``.
On an index of execute_at alone PostgreSQL must sort every job that shares a due time before
it returns the first n: a window of 50,000 jobs due at the same second made each batch of 500
read and sort all 50,000 (on disk, past work_mem). In the claim's own order a batch reads n
index entries, however many jobs share a second.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_SCHEDULED = sa.text("status = 'SCHEDULED'")


def _rebuild(columns: list) -> None:
    if op.get_context().dialect.name != 'postgresql':
        op.drop_index('ix_jobs_due', table_name='jobs', sqlite_where=_SCHEDULED)
        op.create_index('ix_jobs_due', 'jobs', columns, unique=False, sqlite_where=_SCHEDULED)
        return
    # Built beside the old index without blocking writes (on a big table it takes a while), then
    # swapped in; each step can be repeated if a run is interrupted (an interrupted concurrent
    # build leaves an invalid index behind, dropped first).
    with op.get_context().autocommit_block():
        op.drop_index('ix_jobs_due_new', table_name='jobs', postgresql_concurrently=True, if_exists=True)
        op.create_index('ix_jobs_due_new', 'jobs', columns, unique=False, postgresql_where=_SCHEDULED,
                        postgresql_concurrently=True)
        op.drop_index('ix_jobs_due', table_name='jobs', postgresql_concurrently=True, if_exists=True)
        op.execute('ALTER INDEX ix_jobs_due_new RENAME TO ix_jobs_due')


def upgrade() -> None:
    _rebuild(['execute_at', sa.text('priority DESC')])


def downgrade() -> None:
    _rebuild(['execute_at'])
