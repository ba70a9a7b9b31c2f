"""The database schema: jobs and their attempt history. Migrations in ``common/core/migrations``
create exactly this; a test compares the two."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=_now)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=_now, onupdate=_now)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    output: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(200), nullable=True)

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
        # Listing: keyset pagination on (execute_at, id), optionally by status or type.
        Index("ix_jobs_execute_at_id", "execute_at", "id"),
        Index("ix_jobs_status_execute_at_id", "status", "execute_at", "id"),
        Index("ix_jobs_type_execute_at_id", "type", "execute_at", "id"),
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
