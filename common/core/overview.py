"""The dashboard's overview figures from the database: jobs due in each of the next minutes,
and how late the runs due in the last minutes started.

Lateness is an attempt's start minus the time it was due. The due time is stored for the
first attempt of a run only (the job's ``execute_at``); a retry's due time (its backoff) is not
kept once it started, so retries are not measured. The percentiles are the ones the schedules'
on-time figures use (:func:`common.core.schedules.percentile`, nearest rank).

Functions take an open session (the caller owns the transaction), ``now`` and a tenant
(None: every tenant)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from common.core.models import Job, JobAttempt
from common.core.schedules import percentile
from common.core.states import JobStatus
from common.infra.clock import ensure_aware

#: Statuses of jobs that are waiting for their time (the "due soon" counts).
WAITING = (JobStatus.SCHEDULED.value, JobStatus.QUEUED.value)


def due_per_minute(session: Session, *, now: datetime, minutes: int, tenant: str | None = None) -> list[dict[str, Any]]:
    """For each of the next ``minutes`` minutes from ``now``: its start and how many SCHEDULED
    or QUEUED jobs are due in it (one query, one count column per minute)."""
    starts = [now + timedelta(minutes=i) for i in range(minutes)]
    columns = [
        func.coalesce(func.sum(case((and_(Job.execute_at >= start, Job.execute_at < start + timedelta(minutes=1)), 1),
                                    else_=0)), 0)
        for start in starts
    ]
    query = select(*columns).where(Job.status.in_(WAITING), Job.execute_at >= now,
                                   Job.execute_at < now + timedelta(minutes=minutes))
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    counts = session.execute(query).one()
    return [{"start": start, "count": int(count)} for start, count in zip(starts, counts)]


#: Most recent runs the lateness figures are taken from: the overview is read every few seconds
#: per open dashboard, and must not read every run of a busy five minutes.
SAMPLE = 10_000


def lateness(session: Session, *, now: datetime, minutes: int, tenant: str | None = None,
             sample: int = SAMPLE) -> dict[str, Any]:
    """Lateness (ms) of the runs due in the last ``minutes`` that have started: their first
    attempt's start minus their due time; p50, p99, max and how many were measured (of the
    latest ``sample`` runs due). Read through the jobs' ``execute_at`` index and the attempts'
    (job, attempt) key, never by scanning the history."""
    runs = select(Job.id, Job.execute_at, Job.attempt_base).where(
        Job.execute_at >= now - timedelta(minutes=minutes), Job.execute_at <= now)
    if tenant is not None:
        runs = runs.where(Job.tenant == tenant)
    recent = runs.order_by(Job.execute_at.desc()).limit(sample).subquery()
    query = select(JobAttempt.started_at, recent.c.execute_at).join(
        recent, (JobAttempt.job_id == recent.c.id) & (JobAttempt.attempt == recent.c.attempt_base + 1))
    values = [(ensure_aware(started) - ensure_aware(due)).total_seconds() * 1000
              for started, due in session.execute(query) if started is not None]
    rounded = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {
        "p50": rounded(percentile(values, 0.50)),
        "p99": rounded(percentile(values, 0.99)),
        "max": rounded(max(values)) if values else None,
        "measured": len(values),
    }
