"""The database schema: jobs, their attempt history and status changes, schedules, tenants, keys
and audit. Migrations in ``common/core/migrations`` create exactly this; a test compares the two."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from common.infra import clock

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Statuses the lease sweep looks at; literal SQL so the partial index and the query agree.
_IN_FLIGHT_SQL = "status IN ('QUEUED', 'RUNNING', 'RETRYING')"
_SCHEDULED_SQL = "status = 'SCHEDULED'"
_FINISHED_SQL = "status IN ('SUCCESS', 'FAILED', 'CANCELLED', 'SKIPPED')"

#: The tenant of rows written before tenants existed, and of an API with CHRONOQ_AUTH=off.
DEFAULT_TENANT = "default"

Timestamp = DateTime(timezone=True)


def _now() -> datetime:
    """Column default: the clock read when the row is written. A column keeps the callable it
    was given at import time, so this looks ``clock.utcnow`` up on every call (a test's patch of
    it then reaches the defaults too)."""
    return clock.utcnow()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: Timestamp}


class Job(Base):
    """One scheduled job; ``dispatch_token`` fences every dispatch, ``attempts`` counts starts."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: Owner of the job: every query, cancel and idempotency key is scoped by it.
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="SCHEDULED")
    execute_at: Mapped[datetime] = mapped_column(Timestamp)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=3)
    timeout_seconds: Mapped[float] = mapped_column(Float)
    misfire_grace_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Runs lost with their executor (lease ran out mid-run); they do not advance the
    #: idempotency key, so the re-run of a lost attempt carries the key of that attempt.
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dispatch_token: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now, onupdate=_now)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    output: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The schedule this job is an occurrence of, and the occurrence's nominal fire time (before
    #: jitter and catch-up): (schedule_id, scheduled_for) is unique, so however many scanners
    #: make occurrences, each is made once.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("schedules.id", ondelete="SET NULL"), nullable=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: The schedule's overlap policy, copied into its occurrences so the start claim reads it
    #: without a join (null: one-off jobs and ``allow``).
    overlap: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: ``execute_at`` before a trigger or a PATCH moved it.
    original_execute_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: Attempts made by earlier runs (a rerun starts a new run after them): retries count from it.
    attempt_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: How many times the job was run (1, plus one per rerun).
    runs: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: The W3C Trace Context (``traceparent``, ``tracestate``) of the span that created the job,
    #: with CHRONOQ_TRACING on: its dispatch continues that trace (common/infra/tracing.py).
    trace_context: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: The workflow this job is a task of, and the task's key in it (both null for other jobs).
    #: No foreign key: the workflow's tasks are deleted with it (retention), and adding one to
    #: ``jobs`` on SQLite would copy the table and drop its event triggers.
    workflow_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    task_key: Mapped[str | None] = mapped_column(String(64), nullable=True)

    history: Mapped[list["JobAttempt"]] = relationship(
        back_populates="job", order_by="JobAttempt.attempt", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        # The scanner's "due before the horizon" query reads only SCHEDULED rows, in its own
        # order (by time, then priority): a batch reads its rows, not every job of a busy second.
        Index(
            "ix_jobs_due",
            "execute_at",
            priority.column.desc(),
            postgresql_where=text(_SCHEDULED_SQL),
            sqlite_where=text(_SCHEDULED_SQL),
        ),
        # The lease sweep reads only in-flight rows whose lease ran out.
        Index(
            "ix_jobs_lease",
            "lease_until",
            postgresql_where=text(_IN_FLIGHT_SQL),
            sqlite_where=text(_IN_FLIGHT_SQL),
        ),
        # Retention deletes finished jobs oldest first, reading only finished rows.
        Index(
            "ix_jobs_finished",
            "finished_at",
            postgresql_where=text(_FINISHED_SQL),
            sqlite_where=text(_FINISHED_SQL),
        ),
        # Listing: keyset pagination on (execute_at, id), optionally by status or type.
        Index("ix_jobs_execute_at_id", "execute_at", "id"),
        Index("ix_jobs_status_execute_at_id", "status", "execute_at", "id"),
        Index("ix_jobs_type_execute_at_id", "type", "execute_at", "id"),
        # A tenant's listing, and its count of unfinished jobs (the pending quota).
        Index("ix_jobs_tenant_execute_at_id", "tenant", "execute_at", "id"),
        Index("ix_jobs_tenant_status_execute_at_id", "tenant", "status", "execute_at", "id"),
        # Idempotency keys are per tenant: two tenants may use the same key.
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # An occurrence's identity; also the index of a schedule's jobs (list filter, figures).
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_jobs_schedule_id_scheduled_for"),
        # A workflow's tasks, one per key (a unique index, not a constraint: SQLite adds an index
        # in place but a constraint only by copying the table).
        Index("ix_jobs_workflow_id_task_key", "workflow_id", "task_key", unique=True),
    )


class Schedule(Base):
    """A recurring schedule: when it fires (cron or interval, zone, DST and jitter policies),
    what each occurrence is (``job``, a job template) and how missed and overlapping
    occurrences are handled. The scanner makes its occurrences (jobs) ahead of time;
    ``made_until`` is the nominal time up to which they have been decided (made, or skipped by
    the catch-up policy)."""

    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    interval_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    start_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    end_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    dst_gap: Mapped[str] = mapped_column(String(16), default="shift")
    dst_fold: Mapped[str] = mapped_column(String(16), default="once")
    jitter_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    catchup_policy: Mapped[str] = mapped_column(String(16), default="skip")
    catchup_limit: Mapped[int] = mapped_column(Integer, default=10)
    catchup_per_second: Mapped[float] = mapped_column(Float, default=10.0)
    overlap_policy: Mapped[str] = mapped_column(String(16), default="allow")
    job: Mapped[dict[str, Any]] = mapped_column(JSON)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    made_until: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    #: When the next occurrence not yet made fires (null: none ever will, or paused): the
    #: scanner reads only schedules whose next fire time is before its horizon.
    next_fire_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now, onupdate=_now)

    __table_args__ = (
        Index("ix_schedules_next_fire_at", "next_fire_at", postgresql_where=text("NOT paused"),
              sqlite_where=text("NOT paused")),
        Index("ix_schedules_tenant_created_at", "tenant", "created_at"),
    )


class Workflow(Base):
    """A workflow: tasks (jobs with ``workflow_id``) with dependencies and conditions. ``graph``
    holds each task's place in it: ``{"tasks": [{"key", "depends_on", "run_if",
    "allow_failure", "template"}]}`` in the order given (``template``: the payload as given when it
    holds ``{{ … }}`` references, rendered into the task's job when it is released; else null).
    ``status`` is RUNNING until every task has settled (common/core/workflow_release.py)."""

    __tablename__ = "workflows"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="RUNNING")
    failure_policy: Mapped[str] = mapped_column(String(16), default="fail_fast")
    execute_at: Mapped[datetime] = mapped_column(Timestamp)
    graph: Mapped[dict[str, Any]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The schedule this workflow is an occurrence of (its job template is a workflow).
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("schedules.id", ondelete="SET NULL"), nullable=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now, onupdate=_now)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        # Listing, newest first, per tenant.
        Index("ix_workflows_tenant_created_at_id", "tenant", "created_at", "id"),
        # The scanner's release sweep reads only unfinished workflows.
        Index("ix_workflows_running", "updated_at", postgresql_where=text("status = 'RUNNING'"),
              sqlite_where=text("status = 'RUNNING'")),
        # Retention deletes finished workflows oldest first.
        Index("ix_workflows_finished", "finished_at", postgresql_where=text("status <> 'RUNNING'"),
              sqlite_where=text("status <> 'RUNNING'")),
        UniqueConstraint("tenant", "idempotency_key", name="uq_workflows_tenant_idempotency_key"),
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_workflows_schedule_id_scheduled_for"),
    )


class JobAttempt(Base):
    """One attempt of a job: the history row the result service writes."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    dispatch_token: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    output: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(200), nullable=True)

    job: Mapped[Job] = relationship(back_populates="history")

    __table_args__ = (UniqueConstraint("job_id", "attempt", name="uq_job_attempts_job_id_attempt"),)


class Tenant(Base):
    """A tenant: its webhook signing secret (encrypted when CHRONOQ_SECRET_KEY is set) and its
    limits (null: the deployment's defaults)."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    signing_secret: Mapped[str] = mapped_column(Text)
    #: The secret before the last rotation; deliveries carry a signature with each until it
    #: is dropped, so receivers can switch without losing a call.
    previous_signing_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    signing_rotated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    max_pending_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    creates_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_batch_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKey(Base):
    """An API key: ``cq_<prefix>_<secret>``; only the prefix (to find it) and a SHA-256 of the
    whole key are stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.name", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class JobEvent(Base):
    """One change of a job's status, as ``GET /api/events`` streams it. Written by database
    triggers on ``jobs`` (migration 0007), in the transaction of the change, whichever code
    path made it; the columns copy what a client filters on, so a stream reads no job row."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    #: No foreign key: events outlive the jobs retention deletes, and the trigger stays cheap.
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    tenant: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    #: Null for the job's creation.
    previous_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: The job's ``attempts`` after the change (the attempt a RUNNING event starts).
    attempt: Mapped[int] = mapped_column(Integer)
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100))
    #: The database's clock when the change was written.
    at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (
        # Retention deletes the oldest events first.
        Index("ix_job_events_at", "at"),
        # SQLite reuses the highest rowid once its row is deleted; ids must only grow (resumption).
        {"sqlite_autoincrement": True},
    )


class AuditRecord(Base):
    """One request that changed something (or tried to): who, which tenant, what, on which
    object, from where, when, and how it ended (the HTTP status)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    subject: Mapped[str] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[int] = mapped_column(Integer)
    detail: Mapped[Any | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_tenant_at", "tenant", "at"),
    )
