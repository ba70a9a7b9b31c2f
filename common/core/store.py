"""Every statement that moves a job through its lifecycle, in one place. Each is a
compare-and-set on (status, dispatch_token, attempts), which is what makes the invariants hold
across processes: two scanners cannot claim one job, a stale or duplicate dispatch cannot
start, a cancelled job cannot start, and a late update cannot move a job backwards.

Functions take an open session (the caller owns the transaction) and ``now`` (the caller reads
the clock once)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.infra.clock import ensure_aware
from common.core.messages import DispatchMessage, UpdateMessage
from common.core.models import Job, JobAttempt
from common.core.states import CANCELLABLE, TERMINAL, JobStatus, should_apply

log = logging.getLogger(__name__)

_IN_FLIGHT = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)
_TERMINAL = tuple(s.value for s in TERMINAL)


def _dispatch_message(job: Job, fire_at: datetime) -> DispatchMessage:
    return DispatchMessage(
        job_id=job.id,
        token=job.dispatch_token,
        name=job.name,
        type=job.type,
        payload=job.payload or {},
        execute_at=fire_at,
        attempt=job.attempts + 1,
        max_retries=job.max_retries,
        timeout_seconds=job.timeout_seconds,
        misfire_grace_seconds=job.misfire_grace_seconds,
        key_attempt=job.attempts + 1 - (job.lost_attempts or 0),
    )


@dataclass
class Claimed:
    """What one claim produced: messages to publish, and jobs failed for lack of retries."""

    messages: list[DispatchMessage]
    exhausted: list[uuid.UUID]


def _fire_at(job: Job, now: datetime) -> datetime:
    """When the dispatched attempt should fire: the due time for a first dispatch; for a job
    dispatched again (lease ran out) as soon as possible, never before its due or retry time."""
    due = ensure_aware(job.execute_at)
    if job.status == JobStatus.SCHEDULED.value and job.attempts == 0:
        return due
    retry_at = ensure_aware(job.next_attempt_at) if job.next_attempt_at is not None else due
    return max(due, retry_at, now)


def _claim_rows(session: Session, jobs: list[Job], now: datetime, lease: float) -> Claimed:
    claimed = Claimed([], [])
    for job in jobs:
        if job.attempts >= job.max_retries + 1:
            # Its last attempt started and then went silent past its lease: no retry is left.
            if job.status == JobStatus.RUNNING.value:
                _mark_lost(session, job, now)
            job.status = JobStatus.FAILED.value
            job.finished_at = now
            job.lease_until = None
            job.error = job.error or f"attempt {job.attempts} lost (lease expired) and no retries left"
            claimed.exhausted.append(job.id)
            continue
        if job.status == JobStatus.RUNNING.value:
            _mark_lost(session, job, now)
        fire_at = _fire_at(job, now)
        job.status = JobStatus.QUEUED.value
        job.dispatch_token = job.dispatch_token + 1
        job.lease_until = max(fire_at, now) + timedelta(seconds=lease)
        job.updated_at = now
        claimed.messages.append(_dispatch_message(job, fire_at))
    session.flush()
    return claimed


#: How a lost attempt's history row begins; an end reported later keeps it (see _record_attempt).
LOST = "lost: "


def _mark_lost(session: Session, job: Job, now: datetime) -> None:
    """The history row of a running attempt whose executor went silent: FAILED as lost. Only
    an attempt really marked counts as lost (its re-run then keeps its idempotency key)."""
    marked = session.execute(
        update(JobAttempt)
        .where(
            JobAttempt.job_id == job.id,
            JobAttempt.attempt == job.attempts,
            JobAttempt.status == JobStatus.RUNNING.value,
        )
        .values(
            status=JobStatus.FAILED.value,
            finished_at=now,
            error=f"{LOST}no word from executor {job.executor} before its lease ran out",
        )
    )
    if marked.rowcount:
        job.lost_attempts = (job.lost_attempts or 0) + 1


def claim_due(
    session: Session, *, now: datetime, horizon: datetime, lease: float, limit: int,
    expired_before: datetime | None = None,
) -> Claimed:
    """Claim up to ``limit`` jobs to dispatch: SCHEDULED ones due before ``horizon`` (overdue
    included), then in-flight ones whose lease ran out. Rows locked by another scanner are
    skipped, so two scanners never claim the same job. ``expired_before`` (default ``now``)
    bounds which leases count as run out: a lease that ran out while nobody could reach the
    database (so nobody could extend it) is not evidence that its executor is gone."""
    due = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.SCHEDULED.value, Job.execute_at < horizon)
        .order_by(Job.execute_at, Job.priority.desc())
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    expired: list[Job] = []
    if len(due) < limit:
        expired = list(
            session.scalars(
                select(Job)
                .where(Job.status.in_(_IN_FLIGHT), Job.lease_until < (expired_before or now))
                .order_by(Job.lease_until)
                .limit(limit - len(due))
                .with_for_update(skip_locked=True)
            ).all()
        )
        for job in expired:
            log.warning(
                "job %s: lease of dispatch %s ran out while %s; dispatching it again",
                job.id, job.dispatch_token, job.status,
            )
    return _claim_rows(session, list(due) + expired, now, lease)


def claim_ids(session: Session, ids: list[uuid.UUID], *, now: datetime, lease: float) -> Claimed:
    """Claim the given jobs if they are still SCHEDULED (the API's direct dispatch)."""
    jobs = session.scalars(
        select(Job)
        .where(Job.id.in_(ids), Job.status == JobStatus.SCHEDULED.value)
        .with_for_update(skip_locked=True)
    ).all()
    return _claim_rows(session, list(jobs), now, lease)


def unclaim(session: Session, message: DispatchMessage, *, now: datetime) -> bool:
    """Hand a dispatch that has not started back to the scanner (its message was not
    published, or its executor is stopping): SCHEDULED again, so the next scan dispatches it
    without waiting for the lease. A retry keeps its backoff in ``next_attempt_at``."""
    result = session.execute(
        update(Job)
        .where(*_unstarted(message))
        .values(
            status=JobStatus.SCHEDULED.value,
            lease_until=None,
            next_attempt_at=message.execute_at if message.attempt > 1 else None,
            updated_at=now,
        )
    )
    return result.rowcount == 1


def _unstarted(message: DispatchMessage):  # type: ignore[no-untyped-def]
    """Rows where ``message``'s dispatch is current and its attempt has not started."""
    return (
        Job.id == message.job_id,
        Job.dispatch_token == message.token,
        Job.attempts == message.attempt - 1,
        Job.status.in_(_IN_FLIGHT),
    )


def claim_start(
    session: Session,
    message: DispatchMessage,
    *,
    executor: str,
    now: datetime,
    lease: float,
) -> bool:
    """The executor's right to start ``message.attempt``: true for exactly one caller per
    dispatch and attempt, and never for a cancelled, finished or superseded job."""
    result = session.execute(
        update(Job)
        .where(*_unstarted(message))
        .values(
            status=JobStatus.RUNNING.value,
            attempts=message.attempt,
            started_at=now,
            executor=executor,
            next_attempt_at=None,
            lease_until=now + timedelta(seconds=lease),
            updated_at=now,
        )
    )
    if result.rowcount != 1:
        return False
    # The history shows the attempt from its start, even if its executor then dies silently.
    _record_attempt(
        session,
        _attempt_rows(session, [message.job_id]),
        UpdateMessage(
            job_id=message.job_id, token=message.token, status=JobStatus.RUNNING.value,
            attempt=message.attempt, at=now, executor=executor, started_at=now,
        ),
    )
    return True


def extend_leases(session: Session, running: list[DispatchMessage], *, now: datetime, lease: float) -> int:
    """The executor's heartbeat: push the lease of its running attempts ``lease`` seconds
    ahead, so the scanner re-dispatches an attempt only after its executor went silent."""
    if not running:
        return 0
    until = now + timedelta(seconds=lease)
    extended = 0
    for message in running:
        result = session.execute(
            update(Job)
            .where(
                Job.id == message.job_id,
                Job.dispatch_token == message.token,
                Job.attempts == message.attempt,
                Job.status == JobStatus.RUNNING.value,
            )
            .values(lease_until=until)
        )
        extended += result.rowcount
    return extended


def fail_unstarted(session: Session, message: DispatchMessage, *, error: str, now: datetime) -> bool:
    """Mark a dispatched job FAILED without starting it (misfire grace exceeded)."""
    result = session.execute(
        update(Job)
        .where(*_unstarted(message))
        .values(status=JobStatus.FAILED.value, error=error, finished_at=now, lease_until=None, updated_at=now)
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class CancelResult:
    cancelled: bool
    status: str | None  # the status the job has now; None when there is no such job


def cancel(session: Session, job_id: uuid.UUID, *, now: datetime) -> CancelResult:
    """Cancel a job that has not started its current attempt. Atomic against the executor's
    :func:`claim_start`: whichever commits first wins, and the answer says which."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in CANCELLABLE]))
        .values(status=JobStatus.CANCELLED.value, finished_at=now, lease_until=None, updated_at=now)
    )
    if result.rowcount == 1:
        return CancelResult(True, JobStatus.CANCELLED.value)
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return CancelResult(False, status)


def apply_updates(session: Session, messages: list[UpdateMessage], *, lease: float) -> int:
    """Record a batch of executors' updates in order: each attempt's history row always
    (upserted, so a replay changes nothing), the job row only when the update is newer
    (:func:`should_apply`). Returns how many updates moved a job row.

    The batch's jobs are locked with one statement, in id order so that two writers cannot
    deadlock, and their attempt rows are read with one more."""
    ids = sorted({m.job_id for m in messages})
    if not ids:
        return 0
    jobs = {
        job.id: job
        for job in session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id).with_for_update())
    }
    attempts = _attempt_rows(session, list(jobs))
    moved = 0
    for message in messages:
        job = jobs.get(message.job_id)
        if job is None:
            log.warning("update for unknown job %s ignored", message.job_id)
            continue
        _record_attempt(session, attempts, message)
        moved += _move_job(job, message, lease)
    session.flush()
    return moved


def apply_update(session: Session, message: UpdateMessage, *, lease: float) -> bool:
    """:func:`apply_updates` for one message."""
    return apply_updates(session, [message], lease=lease) == 1


def _attempt_rows(session: Session, job_ids: list[uuid.UUID]) -> dict[tuple[uuid.UUID, int], JobAttempt]:
    return {
        (row.job_id, row.attempt): row
        for row in session.scalars(select(JobAttempt).where(JobAttempt.job_id.in_(job_ids)))
    }


def _move_job(job: Job, message: UpdateMessage, lease: float) -> bool:
    if not should_apply(
        current_status=job.status,
        current_token=job.dispatch_token,
        current_attempts=job.attempts,
        update_status=message.status,
        update_token=message.token,
        update_attempt=message.attempt,
    ):
        return False
    job.status = message.status
    job.attempts = max(job.attempts, message.attempt)
    job.executor = message.executor
    job.updated_at = message.at
    if message.started_at is not None:
        job.started_at = message.started_at
    if message.status == JobStatus.RETRYING.value:
        job.error = message.error
        job.next_attempt_at = message.next_attempt_at
        # The executor holds the retry in memory; if it dies, the scanner takes over once the
        # backoff plus the lease has passed.
        job.lease_until = (message.next_attempt_at or message.at) + timedelta(seconds=lease)
    elif message.status in _TERMINAL:
        job.finished_at = message.finished_at or message.at
        job.output = message.output
        job.error = message.error
        job.lease_until = None
        job.next_attempt_at = None
    return True


def _record_attempt(
    session: Session, rows: dict[tuple[uuid.UUID, int], JobAttempt], message: UpdateMessage
) -> None:
    # An attempt ends SUCCESS or FAILED; RETRYING describes the job, not the attempt.
    outcome = JobStatus.FAILED.value if message.status == JobStatus.RETRYING.value else message.status
    row = rows.get((message.job_id, message.attempt))
    if row is None:
        row = JobAttempt(job_id=message.job_id, attempt=message.attempt, dispatch_token=message.token, status=outcome)
        session.add(row)
        rows[(message.job_id, message.attempt)] = row
    elif row.status != JobStatus.RUNNING.value and outcome == JobStatus.RUNNING.value:
        return  # the attempt already ended; a late RUNNING changes nothing
    presumed_lost = row.error if (row.error or "").startswith(LOST) else None
    row.status = outcome
    row.dispatch_token = message.token
    row.executor = message.executor
    row.started_at = message.started_at or row.started_at
    if outcome != JobStatus.RUNNING.value:
        row.finished_at = message.finished_at or message.at
        row.output = message.output
        row.error = message.error
        if presumed_lost:
            # Its executor was alive after all, but silent past the lease: the job was already
            # re-run with the same idempotency key. Keep both facts in the history.
            row.error = f"{presumed_lost}; it ended {outcome} later" + (f": {message.error}" if message.error else "")
