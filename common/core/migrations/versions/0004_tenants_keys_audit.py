"""tenants, API keys and the audit log; jobs belong to a tenant

Every job gets a tenant (``default`` for the rows already there, which is also the tenant of an
API that runs with CHRONOQ_AUTH=off), its idempotency key becomes unique per tenant, and the
listing gets per-tenant indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signing_secret', sa.Text(), nullable=False),
    sa.Column('previous_signing_secret', sa.Text(), nullable=True),
    sa.Column('signing_rotated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('max_pending_jobs', sa.Integer(), nullable=True),
    sa.Column('creates_per_second', sa.Float(), nullable=True),
    sa.Column('max_batch_jobs', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_tenants'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant'], ['tenants.name'], name=op.f('fk_api_keys_tenant_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=True),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=32), nullable=True),
    sa.Column('target_id', sa.String(length=200), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'], unique=False)
    op.create_index('ix_audit_log_tenant_at', 'audit_log', ['tenant', 'at'], unique=False)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('tenant', sa.String(length=64), server_default='default', nullable=False))
        batch.drop_constraint('uq_jobs_idempotency_key', type_='unique')
        batch.create_unique_constraint('uq_jobs_tenant_idempotency_key', ['tenant', 'idempotency_key'])
    op.create_index('ix_jobs_tenant_execute_at_id', 'jobs', ['tenant', 'execute_at', 'id'], unique=False)
    op.create_index('ix_jobs_tenant_status_execute_at_id', 'jobs', ['tenant', 'status', 'execute_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_tenant_status_execute_at_id', table_name='jobs')
    op.drop_index('ix_jobs_tenant_execute_at_id', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('uq_jobs_tenant_idempotency_key', type_='unique')
        batch.create_unique_constraint('uq_jobs_idempotency_key', ['idempotency_key'])
        batch.drop_column('tenant')
    op.drop_index('ix_audit_log_tenant_at', table_name='audit_log')
    op.drop_index('ix_audit_log_at', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('api_keys')
    op.drop_table('tenants')
