"""The API's read queries. Listing is keyset-paginated on (execute_at, id) so that it reads
the ``ix_jobs_*_execute_at_id`` indexes in order and never counts past skipped rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from common.infra.errors import JobNotFound
from common.core.models import Job, JobAttempt
from common.core.states import JobStatus

from api.schemas import Cursor


@dataclass(frozen=True)
class JobFilter:
    tenant: str | None = None  # None: every tenant (admins)
    statuses: tuple[str, ...] = ()
    type: str | None = None
    name: str | None = None
    execute_after: datetime | None = None
    execute_before: datetime | None = None
    schedule_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    metadata: tuple[tuple[str, str], ...] = ()


def get_job(session: Session, job_id: uuid.UUID, tenant: str | None = None) -> Job:
    """The job, or :class:`JobNotFound` — also when it belongs to another tenant than
    ``tenant`` (None: any), so that a caller cannot tell another tenant's job from none."""
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session, where: JobFilter, *, limit: int, after: Cursor | None = None
) -> tuple[list[Job], Cursor | None]:
    """One page of jobs in (execute_at, id) order, and the cursor of the next page (None at
    the end)."""
    query = select(Job)
    if where.tenant is not None:
        query = query.where(Job.tenant == where.tenant)
    if where.statuses:
        query = query.where(Job.status.in_(where.statuses))
    if where.type is not None:
        query = query.where(Job.type == where.type)
    if where.name is not None:
        query = query.where(Job.name == where.name)
    if where.execute_after is not None:
        query = query.where(Job.execute_at >= where.execute_after)
    if where.execute_before is not None:
        query = query.where(Job.execute_at < where.execute_before)
    if where.schedule_id is not None:
        query = query.where(Job.schedule_id == where.schedule_id)
    if where.workflow_id is not None:
        query = query.where(Job.workflow_id == where.workflow_id)
    for key, value in where.metadata:
        # ->> on PostgreSQL, json_extract on SQLite: the value compared as text.
        query = query.where(Job.meta[key].as_string() == value)
    if after is not None:
        # A row comparison, which PostgreSQL turns into an index range on (…, execute_at, id).
        query = query.where(tuple_(Job.execute_at, Job.id) > tuple_(after.execute_at, after.id))
    rows = list(session.scalars(query.order_by(Job.execute_at, Job.id).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(last.execute_at, last.id)


def list_attempts(session: Session, job_id: uuid.UUID, tenant: str | None = None) -> list[JobAttempt]:
    """The job's attempts in order; :class:`JobNotFound` when there is no such job (of ``tenant``)."""
    get_job(session, job_id, tenant)
    return list(
        session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt))
    )


def job_stats(session: Session, *, now: datetime, tenant: str | None = None) -> dict[str, Any]:
    """Counts by status (every status, zeros included) and by type, and how many SCHEDULED
    jobs are overdue at ``now``, of ``tenant`` (None: every tenant)."""
    scope = (Job.tenant == tenant,) if tenant is not None else ()
    by_status = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).where(*scope).group_by(Job.status)):
        by_status[status] = count
    by_type = {
        job_type: count
        for job_type, count in session.execute(
            select(Job.type, func.count()).where(*scope).group_by(Job.type).order_by(Job.type)
        )
    }
    overdue = session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.status == JobStatus.SCHEDULED.value, Job.execute_at < now, *scope)
    )
    return {"total": sum(by_status.values()), "by_status": by_status, "by_type": by_type, "overdue": overdue or 0}
