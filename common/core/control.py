"""Operator control of jobs: run one now (trigger), run a finished one again (rerun), change one
that has not started (update), and rerun every finished job a filter matches (redrive).

Like :mod:`common.core.store`, every change is one compare-and-set UPDATE on the job's status
(and tenant), so it is atomic against the scanner's claim, the executor's start claim and a
cancel: whichever commits first wins, and the loser sees the status the winner left. Each one
also moves the job's **dispatch token** on: a dispatch already on its way to an executor
(a QUEUED job) can then no longer start (``store.claim_starts`` compares the token), and no
late update of an earlier dispatch or run can move the job again (``states.should_apply``).
The caller dispatches the job again afterwards (``store.claim_ids`` in the same transaction,
as the API's direct dispatch does).

A rerun starts a new *run* of the same job: ``attempt_base`` becomes the attempts made so far
(retries count from it), ``runs`` goes up by one, and attempt numbers go on from the last one,
so the history rows of earlier runs stay as they are and never clash with the new ones.

Functions take an open session (the caller owns the transaction) and ``now`` (the caller reads
the clock once); none of them knows about HTTP."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Row, func, null, select, update
from sqlalchemy.orm import Session

from common.core.models import Job
from common.core.states import TERMINAL, JobStatus

log = logging.getLogger(__name__)

#: Statuses a job can be rerun from.
FINISHED = tuple(sorted(s.value for s in TERMINAL))
#: Statuses in which a job has not started its current attempt and may be triggered or changed.
NOT_STARTED = (JobStatus.SCHEDULED.value, JobStatus.QUEUED.value)
#: Jobs rerun per transaction by :func:`redrive`'s callers.
REDRIVE_BATCH = 1000

#: What the API reads of a job before it changes it: whose it is, what it runs, where it is.
_FOUND_COLUMNS = (
    Job.id, Job.tenant, Job.type, Job.status, Job.payload, Job.attempts, Job.attempt_base, Job.max_retries,
    Job.execute_at, Job.next_attempt_at, Job.dispatch_token, Job.workflow_id,
)
#: What a change returns of the row it wrote.
_CHANGED_COLUMNS = (Job.id, Job.execute_at, Job.next_attempt_at, Job.dispatch_token, Job.runs, Job.attempts)


@dataclass(frozen=True)
class Outcome:
    """What became of a change: ``row`` (as :data:`_CHANGED_COLUMNS`) when it was made; else
    ``status`` is the status that refused it, None when there is no such job (of the tenant)."""

    row: Row[Any] | None
    status: str | None

    @property
    def done(self) -> bool:
        return self.row is not None


def _scope(tenant: str | None) -> tuple[Any, ...]:
    return (Job.tenant == tenant,) if tenant is not None else ()


def find(session: Session, job_id: uuid.UUID, *, tenant: str | None = None, lock: bool = False) -> Row[Any] | None:
    """The job's :data:`_FOUND_COLUMNS`, or None when there is no such job — also when it
    belongs to another tenant than ``tenant`` (None: any), which must look the same. With
    ``lock`` the row is locked for the transaction (an update decides on what it read)."""
    query = select(*_FOUND_COLUMNS).where(Job.id == job_id, *_scope(tenant))
    if lock:
        query = query.with_for_update()
    return session.execute(query).first()


def _change(session: Session, job_id: uuid.UUID, allowed: Sequence[str], values: dict[Any, Any], *,
            tenant: str | None, extra: Sequence[Any] = ()) -> Outcome:
    """The compare-and-set: write ``values`` if the job (of ``tenant``) is in one of ``allowed``."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed), *_scope(tenant), *extra)
        .values(values)
        .returning(*_CHANGED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).first()
    if row is not None:
        return Outcome(row, None)
    return Outcome(None, session.scalar(select(Job.status).where(Job.id == job_id, *_scope(tenant))))


def _fenced(now: datetime) -> dict[Any, Any]:
    """What every change writes: SCHEDULED (for the caller's direct dispatch, or the scanner)
    with the next dispatch token, so that no dispatch or update made before can act on the job."""
    return {
        Job.status: JobStatus.SCHEDULED.value,
        Job.dispatch_token: Job.dispatch_token + 1,
        Job.lease_until: None,
        Job.updated_at: now,
    }


def _moved(now: datetime) -> dict[Any, Any]:
    """``execute_at`` moved to ``now``, the time it had first kept in ``original_execute_at``
    (SET reads the row as it was, so this is the old ``execute_at``)."""
    return {
        Job.original_execute_at: func.coalesce(Job.original_execute_at, Job.execute_at),
        Job.execute_at: now,
        Job.next_attempt_at: None,
    }


def trigger(session: Session, job_id: uuid.UUID, *, now: datetime, tenant: str | None = None) -> Outcome:
    """Make a SCHEDULED or QUEUED job due ``now``: its time moves to ``now`` (the first time it
    had is kept in ``original_execute_at``) and it is SCHEDULED again with the next dispatch
    token, so the dispatch of a QUEUED job that an executor may already hold cannot start.
    The caller dispatches it (``store.claim_ids``) in the same transaction."""
    outcome = _change(session, job_id, NOT_STARTED, {**_fenced(now), **_moved(now)}, tenant=tenant)
    if outcome.done:
        log.info("job %s triggered: due now (dispatch token %d fenced off)", job_id, outcome.row.dispatch_token - 1)
    return outcome


def rerun(session: Session, job_id: uuid.UUID, *, now: datetime, tenant: str | None = None) -> Outcome:
    """Start a new run of a finished job (SUCCESS, FAILED, CANCELLED, SKIPPED), due ``now``:
    its attempts so far become the run's ``attempt_base`` (it gets ``1 + max_retries``
    attempts again, numbered on from the last one), ``runs`` goes up by one, and the last
    run's ``finished_at``, ``output`` and ``error`` are cleared; its history stays. The caller
    dispatches it (``store.claim_ids``) in the same transaction."""
    outcome = _change(session, job_id, FINISHED, rerun_values(now), tenant=tenant)
    if outcome.done:
        log.info("job %s rerun: run %d starts after attempt %d", job_id, outcome.row.runs, outcome.row.attempts)
    return outcome


def rerun_values(now: datetime) -> dict[Any, Any]:
    """What a rerun writes: a new run, due ``now``, SCHEDULED with the next dispatch token."""
    return {
        **_fenced(now), **_moved(now),
        Job.attempt_base: Job.attempts,
        Job.runs: Job.runs + 1,
        Job.finished_at: None,
        Job.output: null(),  # SQL NULL, as a job that never finished has (not JSON null)
        Job.error: None,
    }


#: Fields :func:`update_job` may change, by their attribute on :class:`Job`.
CHANGEABLE = ("execute_at", "payload", "max_retries", "timeout_seconds", "priority", "meta")


def update_job(
    session: Session, job_id: uuid.UUID, changes: dict[str, Any], *, now: datetime, attempts: int,
    tenant: str | None = None,
) -> Outcome:
    """Change the :data:`CHANGEABLE` fields of a job that has not started (SCHEDULED or QUEUED)
    and still has made ``attempts`` attempts (what the caller validated against). It is left
    SCHEDULED with the next dispatch token: a QUEUED job's dispatch can no longer start, and
    the caller dispatches it again if it is due soon (else the scanner will). A new
    ``execute_at`` keeps the first one in ``original_execute_at``."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise ValueError(f"cannot change {sorted(unknown)}")
    values: dict[Any, Any] = {getattr(Job, name): value for name, value in changes.items()}
    if "execute_at" in changes:
        values[Job.original_execute_at] = func.coalesce(Job.original_execute_at, Job.execute_at)
        values[Job.next_attempt_at] = None
    outcome = _change(session, job_id, NOT_STARTED, {**_fenced(now), **values}, tenant=tenant,
                      extra=(Job.attempts == attempts,))
    if outcome.done:
        log.info("job %s updated (%s); dispatch token now %d", job_id, ", ".join(sorted(changes)),
                 outcome.row.dispatch_token)
    return outcome


# --- redrive: rerun every finished job a filter matches -----------------------------------


@dataclass(frozen=True)
class RedriveFilter:
    """Which finished jobs a redrive reruns. ``tenant`` None: every tenant's (admins).
    ``finished_before`` is always set by the caller (at most the request's time), so that a job
    rerun by this redrive and finished again meanwhile is not picked up twice."""

    finished_before: datetime
    tenant: str | None = None
    statuses: tuple[str, ...] = (JobStatus.FAILED.value,)
    type: str | None = None
    name: str | None = None
    schedule_id: uuid.UUID | None = None
    finished_after: datetime | None = None
    execute_after: datetime | None = None
    execute_before: datetime | None = None
    #: A type left out (``shell`` for callers who may not run it).
    exclude_type: str | None = None

    def __post_init__(self) -> None:
        if not self.statuses or not set(self.statuses) <= set(FINISHED):
            raise ValueError(f"statuses must be some of {FINISHED}, got {self.statuses}")


def _matching(where: RedriveFilter) -> list[Any]:
    # A workflow's tasks are rerun with their workflow (POST /api/workflows/{id}/rerun), which
    # keeps its status and releases in step: a redrive leaves them out.
    clauses = [Job.status.in_(where.statuses), Job.finished_at < where.finished_before, *_scope(where.tenant),
               Job.workflow_id.is_(None)]
    for column, value in ((Job.type, where.type), (Job.name, where.name), (Job.schedule_id, where.schedule_id)):
        if value is not None:
            clauses.append(column == value)
    if where.exclude_type is not None:
        clauses.append(Job.type != where.exclude_type)
    if where.finished_after is not None:
        clauses.append(Job.finished_at >= where.finished_after)
    if where.execute_after is not None:
        clauses.append(Job.execute_at >= where.execute_after)
    if where.execute_before is not None:
        clauses.append(Job.execute_at < where.execute_before)
    return clauses


def count_matching(session: Session, where: RedriveFilter) -> int:
    """How many jobs ``where`` matches now."""
    return session.scalar(select(func.count()).select_from(Job).where(*_matching(where))) or 0


def matching_by_tenant(session: Session, where: RedriveFilter, *, limit: int) -> dict[str, int]:
    """Of the first ``limit`` jobs a redrive would take (oldest finished first), how many are
    each tenant's: what each tenant's quota must admit."""
    first = (
        select(Job.tenant).where(*_matching(where)).order_by(Job.finished_at, Job.id).limit(limit).subquery()
    )
    return {tenant: count for tenant, count in session.execute(
        select(first.c.tenant, func.count()).group_by(first.c.tenant)
    )}


def any_matching(session: Session, where: RedriveFilter) -> bool:
    """Whether ``where`` still matches a job."""
    return session.scalar(select(select(Job.id).where(*_matching(where)).exists())) or False


@dataclass(frozen=True)
class RedriveBatch:
    """What one batch of a redrive did: how many matching jobs it picked (fewer than asked: the
    filter has no more), and the jobs it reran (fewer than picked when another request changed
    some of them meanwhile)."""

    picked: int
    rerun: list[uuid.UUID]


def redrive_batch(session: Session, where: RedriveFilter, *, now: datetime, size: int) -> RedriveBatch:
    """Rerun (as :func:`rerun`) up to ``size`` jobs ``where`` matches, oldest finished first, with
    three set-based statements whatever ``size`` is: the ids of the oldest matching jobs, a lock
    of those rows in id order, and one UPDATE of them all. The caller dispatches the jobs rerun
    (``store.claim_ids``) in the same transaction.

    The lock waits for the rows rather than skipping them (``SKIP LOCKED`` would pass over a job
    the result writer happens to be writing, and the redrive would silently miss it); it takes
    them in id order, as the result writer and the executors' write-through do, so none of them
    can deadlock with a redrive, and it reads each row again once it has it, so a job another
    request reran meanwhile is left alone. (Not ``UPDATE … WHERE id IN (SELECT … LIMIT n FOR
    UPDATE)``: PostgreSQL may run that subquery again per row and, no longer seeing the rows
    already updated, change far more than ``n``.)"""
    picked = list(session.scalars(
        select(Job.id).where(*_matching(where)).order_by(Job.finished_at, Job.id).limit(size)
    ))
    if not picked:
        return RedriveBatch(0, [])
    locked = list(session.scalars(
        select(Job.id).where(Job.id.in_(picked), *_matching(where)).order_by(Job.id).with_for_update()
    ))
    rerun: list[uuid.UUID] = []
    if locked:
        rerun = [uuid.UUID(str(job_id)) for job_id in session.scalars(
            update(Job)
            .where(Job.id.in_(locked), Job.status.in_(where.statuses))
            .values(rerun_values(now))
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )]
        log.debug("redrive: %d jobs rerun, e.g. job %s", len(rerun), rerun[0] if rerun else None)
    return RedriveBatch(len(picked), rerun)
