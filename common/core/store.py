"""Every statement that moves a job through its lifecycle, in one place. Each is a
compare-and-set on (status, dispatch_token, attempts), which is what makes the invariants hold
across processes: two scanners cannot claim one job, a stale or duplicate dispatch cannot
start, a cancelled job cannot start, and a late update cannot move a job backwards.

Functions take an open session (the caller owns the transaction) and ``now`` (the caller reads
the clock once)."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Sequence

from sqlalchemy import JSON, Row, Uuid, bindparam, case, delete, exists, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.types import BigInteger, DateTime, Float, Integer, String

from common.core import workflow_release
from common.infra import clock
from common.infra.clock import ensure_aware
from common.core.messages import DispatchMessage, UpdateMessage
from common.core.models import DEFAULT_TENANT, AuditRecord, Job, JobAttempt
from common.core.secrets import redact
from common.core.states import CANCELLABLE, TERMINAL, JobStatus, should_apply

log = logging.getLogger(__name__)

_IN_FLIGHT = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)
_TERMINAL = tuple(s.value for s in TERMINAL)


def _dispatch_message(
    job: Any, fire_at: datetime, *, token: int | None = None, lost_attempts: int | None = None
) -> DispatchMessage:
    """The dispatch of ``job``'s next attempt (a :class:`Job` or a row with its columns);
    ``token`` and ``lost_attempts`` are the values being written, when not yet the job's.

    The payload is redacted (secret values "***"): the topic and its dead letters never carry
    a secret in clear, and the executor runs the payload its start claim reads from the row.
    The job's stored trace context travels beside it (record headers, with tracing on)."""
    lost = job.lost_attempts if lost_attempts is None else lost_attempts
    return DispatchMessage(
        job_id=job.id,
        token=job.dispatch_token if token is None else token,
        name=job.name,
        type=job.type,
        payload=redact(job.type, job.payload or {}),
        tenant=job.tenant,
        execute_at=fire_at,
        attempt=job.attempts + 1,
        max_retries=job.max_retries,
        timeout_seconds=job.timeout_seconds,
        misfire_grace_seconds=job.misfire_grace_seconds,
        key_attempt=job.attempts + 1 - (lost or 0),
        priority=job.priority,
        trace=job.trace_context,
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


#: What a claim reads of each job it locks: enough to decide its fate and write its dispatch.
_CLAIM_COLUMNS = (
    Job.id, Job.tenant, Job.status, Job.dispatch_token, Job.name, Job.type, Job.payload, Job.execute_at,
    Job.next_attempt_at, Job.attempts, Job.max_retries, Job.timeout_seconds,
    Job.misfire_grace_seconds, Job.lost_attempts, Job.executor, Job.priority, Job.attempt_base,
    Job.trace_context, Job.workflow_id,
)


def _claim_rows(session: Session, rows: Sequence[Row[Any]], now: datetime, lease: float) -> Claimed:
    """Dispatch the locked ``rows`` (read as :data:`_CLAIM_COLUMNS`): each QUEUED with the next
    dispatch token and a lease from its fire time, or FAILED when no retry is left. A RUNNING
    one (its lease ran out mid-run) first has its attempt marked lost."""
    claimed = Claimed([], [])
    queued: list[dict[str, Any]] = []
    settled: set[Any] = set()  # workflows of the tasks failed here
    for row in rows:
        lost = row.lost_attempts or 0
        if row.status == JobStatus.RUNNING.value and _mark_lost(session, row, now):
            lost += 1
        if row.attempts - row.attempt_base >= row.max_retries + 1:
            # Its last attempt started and then went silent past its lease: no retry is left.
            session.execute(
                update(Job)
                .where(Job.id == row.id)
                .values(
                    status=JobStatus.FAILED.value, finished_at=now, lease_until=None, lost_attempts=lost,
                    updated_at=now,
                    error=func.coalesce(
                        func.nullif(Job.error, ""), f"attempt {row.attempts} lost (lease expired) and no retries left"
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            claimed.exhausted.append(row.id)
            settled.add(row.workflow_id)
            continue
        fire_at = _fire_at(row, now)  # type: ignore[arg-type]
        token = row.dispatch_token + 1
        queued.append(dict(
            id=row.id, status=JobStatus.QUEUED.value, dispatch_token=token, lost_attempts=lost, updated_at=now,
            lease_until=max(fire_at, now) + timedelta(seconds=lease),
        ))
        claimed.messages.append(_dispatch_message(row, fire_at, token=token, lost_attempts=lost))
    _write_rows(session, Job, queued)
    workflow_release.after_settle(session, settled, now=now)
    return claimed


def _write_rows(session: Session, entity: type[Any], rows: list[dict[str, Any]]) -> None:
    """Set each row of ``entity`` (found by its ``id``) to the values ``rows`` give, all rows
    naming the same columns. On PostgreSQL one statement writes them all (UPDATE ... FROM
    unnest, one array per column): per-row UPDATEs cost a statement each, which was most of a
    large claim's and of a result batch's time. Elsewhere (SQLite, small and local) an
    executemany."""
    if not rows:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        session.execute(update(entity), rows)  # the ORM's bulk UPDATE by primary key
        return
    table = entity.__table__
    names = list(rows[0])
    quote = bind.dialect.identifier_preparer.quote
    arrays = ", ".join(f"CAST(:{name} AS {table.c[name].type.compile(bind.dialect)}[])" for name in names)
    sql = (
        f"UPDATE {quote(table.name)} SET {', '.join(f'{quote(n)} = v.{quote(n)}' for n in names if n != 'id')}"
        f" FROM unnest({arrays}) AS v({', '.join(quote(n) for n in names)}) WHERE {quote(table.name)}.id = v.id"
    )
    session.execute(text(sql), {name: _array(table.c[name].type, [row[name] for row in rows]) for name in names})


def _array(column_type: Any, values: list[Any]) -> list[Any]:
    """``values`` as psycopg2 sends them in an array that the statement casts to the column's
    type: UUIDs and JSON as text, everything else as it is."""
    if isinstance(column_type, Uuid):
        return [None if v is None else str(v) for v in values]
    if isinstance(column_type, JSON):
        return [None if v is None else json.dumps(v) for v in values]
    return values


#: How a lost attempt's history row begins; an end reported later keeps it (see _record_attempt).
LOST = "lost: "


def _mark_lost(session: Session, job: Any, now: datetime) -> bool:
    """The history row of a running attempt whose executor went silent: FAILED as lost. Only
    an attempt really marked counts as lost (its re-run then keeps its idempotency key);
    returns whether it was marked. ``job`` is a claimed row (or a :class:`Job`)."""
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
        .execution_options(synchronize_session=False)
    )
    return bool(marked.rowcount)


def claim_due(
    session: Session, *, now: datetime, horizon: datetime, lease: float, limit: int,
    expired_before: datetime | None = None,
) -> Claimed:
    """Claim up to ``limit`` jobs to dispatch: SCHEDULED ones due before ``horizon`` (overdue
    included), then in-flight ones whose lease ran out. Rows locked by another scanner are
    skipped, so two scanners never claim the same job. ``expired_before`` (default ``now``)
    bounds which leases count as run out: a lease that ran out while nobody could reach the
    database (so nobody could extend it) is not evidence that its executor is gone.

    Each kind is read with one locking SELECT on its partial index and all are written with one
    more statement (:func:`_write_rows`), so a claim costs three statements whatever ``limit`` is."""
    due = session.execute(
        select(*_CLAIM_COLUMNS)
        .where(Job.status == JobStatus.SCHEDULED.value, Job.execute_at < horizon)
        .order_by(Job.execute_at, Job.priority.desc())
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    expired: Sequence[Row[Any]] = []
    if len(due) < limit:
        expired = session.execute(
            select(*_CLAIM_COLUMNS)
            .where(Job.status.in_(_IN_FLIGHT), Job.lease_until < (expired_before or now))
            .order_by(Job.lease_until)
            .limit(limit - len(due))
            .with_for_update(skip_locked=True)
        ).all()
        for row in expired:
            log.warning(
                "job %s: lease of dispatch %s ran out while %s; dispatching it again",
                row.id, row.dispatch_token, row.status,
            )
    return _claim_rows(session, [*due, *expired], now, lease)


def claim_ids(session: Session, ids: list[uuid.UUID], *, now: datetime, lease: float) -> Claimed:
    """Claim the given jobs if they are still SCHEDULED (the API's direct dispatch)."""
    rows = session.execute(
        select(*_CLAIM_COLUMNS)
        .where(Job.id.in_(ids), Job.status == JobStatus.SCHEDULED.value)
        .with_for_update(skip_locked=True)
    ).all()
    return _claim_rows(session, rows, now, lease)


def unclaim(session: Session, message: DispatchMessage, *, now: datetime) -> bool:
    """Hand a dispatch that has not started back to the scanner (its message was not
    published, or its executor is stopping): SCHEDULED again, so the next scan dispatches it
    without waiting for the lease. A retry keeps its backoff in ``next_attempt_at``."""
    return message.job_id in unclaim_all(session, [message], now=now)


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
    dispatch and attempt, and never for a cancelled, finished or superseded job, nor for a
    message naming another tenant than the job's."""
    return bool(claim_starts(session, [message], executor=executor, now=now, lease=lease))


#: Identifies one dispatched attempt: (job id, dispatch token, attempt).
AttemptKey = tuple[uuid.UUID, int, int]


def attempt_key(message: DispatchMessage) -> AttemptKey:
    return (message.job_id, message.token, message.attempt)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What a claimed attempt runs, read from its row by the claim itself: the executor runs
    this, never the type and payload of the message (which a forged or altered record could
    change; the payload there is redacted anyway). ``payload`` is as stored, its secret values
    still sealed."""

    type: str
    payload: dict[str, Any]
    tenant: str
    timeout_seconds: float
    max_retries: int
    #: Attempts of earlier runs (reruns): retries are counted from here.
    attempt_base: int = 0
    #: A workflow's task: its end releases other tasks, so it is reported without delay.
    in_workflow: bool = False


#: The start claim's write on PostgreSQL: the attempts of one batch in one statement with a
#: fixed shape (arrays), so it is compiled once however many attempts a batch holds.
_START_POSTGRESQL = text(
    "UPDATE jobs SET status = :running, attempts = jobs.attempts + 1, started_at = v.started,"
    " executor = :executor, next_attempt_at = NULL, lease_until = :lease_until, updated_at = :now"
    " FROM unnest(CAST(:ids AS uuid[]), :tokens, :attempts, :starts, :tenants)"
    " AS v(id, token, attempts, started, tenant)"
    " WHERE jobs.id = v.id AND jobs.dispatch_token = v.token AND jobs.attempts = v.attempts"
    " AND jobs.tenant = v.tenant AND jobs.status IN ('QUEUED', 'RUNNING', 'RETRYING')"
    # A first attempt never starts before the job's time, whatever a dispatch says (messages
    # carry milliseconds; the row, microseconds).
    " AND (jobs.attempts > 0 OR v.started >= jobs.execute_at - interval '5 milliseconds')"
    # An occurrence whose schedule does not allow overlap waits while another one runs.
    " AND (jobs.overlap IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS other WHERE other.schedule_id = jobs.schedule_id"
    " AND other.id <> jobs.id AND other.status IN ('RUNNING', 'RETRYING')))"
    " RETURNING jobs.id, jobs.dispatch_token, jobs.attempts, jobs.type, jobs.payload, jobs.tenant,"
    " jobs.timeout_seconds, jobs.max_retries, jobs.attempt_base, jobs.workflow_id"
).bindparams(
    bindparam("ids", type_=ARRAY(String)),
    bindparam("tokens", type_=ARRAY(BigInteger)),
    bindparam("attempts", type_=ARRAY(Integer)),
    bindparam("starts", type_=ARRAY(DateTime(timezone=True))),
    bindparam("tenants", type_=ARRAY(String)),
).columns(id=Uuid, dispatch_token=BigInteger, attempts=Integer, type=String, payload=JSON, tenant=String,
          timeout_seconds=Float, max_retries=Integer, attempt_base=Integer, workflow_id=Uuid)


def claim_starts(
    session: Session,
    messages: Sequence[DispatchMessage],
    *,
    executor: str,
    now: datetime,
    lease: float,
) -> dict[AttemptKey, ClaimedRow]:
    """:func:`claim_start` for many attempts in one statement, taken shortly before they are
    due: each row is the same compare-and-set (current dispatch, attempt not started, job in
    flight, and the message's tenant the job's), so a claimed job answers a cancel with 409 and
    an unclaimed one never starts. ``started_at`` is the planned start (the due time, or
    ``now`` when later); the attempt's end reports the real one; on PostgreSQL a first
    attempt planned before the job's ``execute_at`` is not claimed (a forged early dispatch).
    Returns the attempts claimed, each with the type, payload, tenant, timeout and retries its
    row holds (read by the same statement: what
    runs is what the database says); each gets its RUNNING history row (one INSERT for all)."""
    if not messages:
        return {}
    planned = {m.job_id: max(ensure_aware(m.execute_at), now) for m in messages}
    lease_until = now + timedelta(seconds=lease)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_START_POSTGRESQL, dict(
            running=JobStatus.RUNNING.value, executor=executor, lease_until=lease_until, now=now,
            ids=[str(m.job_id) for m in messages], tokens=[m.token for m in messages],
            attempts=[m.attempt - 1 for m in messages], starts=[planned[m.job_id] for m in messages],
            tenants=[m.tenant for m in messages],
        )).all()
    else:
        rows = session.execute(
            update(Job)
            .where(
                tuple_(Job.id, Job.dispatch_token, Job.attempts, Job.tenant).in_(
                    [(m.job_id, m.token, m.attempt - 1, m.tenant) for m in messages]
                ),
                Job.status.in_(_IN_FLIGHT),
                or_(Job.overlap.is_(None), ~_running_sibling()),
            )
            .values(
                status=JobStatus.RUNNING.value,
                attempts=Job.attempts + 1,
                started_at=case(planned, value=Job.id),
                executor=executor,
                next_attempt_at=None,
                lease_until=lease_until,
                updated_at=now,
            )
            .returning(Job.id, Job.dispatch_token, Job.attempts, Job.type, Job.payload, Job.tenant,
                       Job.timeout_seconds, Job.max_retries, Job.attempt_base, Job.workflow_id)
            .execution_options(synchronize_session=False)
        ).all()
    claimed = {
        (uuid.UUID(str(job_id)), token, attempt): ClaimedRow(job_type, payload or {}, tenant, timeout, retries, base,
                                                             workflow_id is not None)
        for job_id, token, attempt, job_type, payload, tenant, timeout, retries, base, workflow_id in rows
    }
    if len(claimed) < len(messages):
        started = {job_id for job_id, _, _ in claimed}
        _settle_overlaps(session, [m for m in messages if m.job_id not in started], now=now)
    if claimed:
        # The history shows the attempt from its start, even if its executor then dies silently.
        session.execute(
            insert(JobAttempt),
            [
                {
                    "job_id": job_id, "attempt": attempt, "dispatch_token": token,
                    "status": JobStatus.RUNNING.value, "executor": executor, "started_at": planned[job_id],
                }
                for job_id, token, attempt in claimed
            ],
        )
    return claimed


def _running_sibling(job: Any = Job) -> Any:
    """EXISTS another occurrence of ``job``'s schedule that is running (or between retries)."""
    other = aliased(Job)
    return exists().where(
        other.schedule_id == job.schedule_id, other.id != job.id, other.status.in_(_RUNNING_OR_RETRYING)
    )


_RUNNING_OR_RETRYING = (JobStatus.RUNNING.value, JobStatus.RETRYING.value)


def _settle_overlaps(session: Session, messages: Sequence[DispatchMessage], *, now: datetime) -> None:
    """Of dispatches that were not claimed, those held back by their schedule's overlap policy
    (another occurrence still running): with ``skip`` the occurrence is SKIPPED; with
    ``queue_one`` it goes back to SCHEDULED, overdue, so the scanner dispatches it again at its
    next sweep and it starts once the other one has ended — unless an older occurrence is
    already waiting so, when it is SKIPPED (one waits at most)."""
    blocked = session.execute(
        select(Job.id, Job.overlap, Job.schedule_id, Job.scheduled_for)
        .where(
            tuple_(Job.id, Job.dispatch_token, Job.attempts).in_([(m.job_id, m.token, m.attempt - 1) for m in messages]),
            Job.status.in_(_IN_FLIGHT), Job.overlap.is_not(None), _running_sibling(),
        )
        .with_for_update()
    ).all()
    skipped, waiting = [], []
    for row in blocked:
        if row.overlap == "queue_one" and not session.scalar(
            select(func.count()).select_from(Job).where(
                Job.schedule_id == row.schedule_id, Job.id != row.id, Job.scheduled_for < row.scheduled_for,
                Job.status.in_((JobStatus.SCHEDULED.value, JobStatus.QUEUED.value)),
                Job.attempts == Job.attempt_base, Job.execute_at <= now,
            )
        ):
            waiting.append(row.id)
        else:
            skipped.append(row.id)
    if skipped:
        session.execute(
            update(Job).where(Job.id.in_(skipped))
            .values(status=JobStatus.SKIPPED.value, finished_at=now, updated_at=now, lease_until=None,
                    error="skipped: the previous occurrence of its schedule was still running (overlap_policy)")
            .execution_options(synchronize_session=False)
        )
        log.info("occurrences %s skipped: the previous one still runs", ", ".join(map(str, skipped)))
    if waiting:
        session.execute(
            update(Job).where(Job.id.in_(waiting))
            .values(status=JobStatus.SCHEDULED.value, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        log.info("occurrences %s wait for the previous one to end (queue_one)", ", ".join(map(str, waiting)))


def extend_leases(session: Session, running: list[DispatchMessage], *, now: datetime, lease: float) -> int:
    """The executor's heartbeat: push the lease of its running attempts ``lease`` seconds
    ahead, so the scanner re-dispatches an attempt only after its executor went silent."""
    if not running:
        return 0
    result = session.execute(
        update(Job)
        .where(
            tuple_(Job.id, Job.dispatch_token, Job.attempts).in_([attempt_key(m) for m in running]),
            Job.status == JobStatus.RUNNING.value,
        )
        .values(lease_until=now + timedelta(seconds=lease))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def fail_unstarted(session: Session, message: DispatchMessage, *, error: str, now: datetime) -> bool:
    """Mark a dispatched job FAILED without starting it (misfire grace exceeded)."""
    failed = session.execute(
        update(Job)
        .where(*_unstarted(message))
        .values(status=JobStatus.FAILED.value, error=error, finished_at=now, lease_until=None, updated_at=now)
        .returning(Job.workflow_id)
    ).all()
    workflow_release.after_settle(session, [row.workflow_id for row in failed], now=now)
    return len(failed) == 1


@dataclass(frozen=True)
class CancelResult:
    cancelled: bool
    status: str | None  # the status the job has now; None when there is no such job


def cancel(session: Session, job_id: uuid.UUID, *, now: datetime, tenant: str | None = None) -> CancelResult:
    """Cancel a job that has not started its current attempt. Atomic against the executor's
    :func:`claim_start`: whichever commits first wins, and the answer says which. With
    ``tenant``, a job of another tenant is treated as no job (status None)."""
    scope = (Job.tenant == tenant,) if tenant is not None else ()
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in CANCELLABLE]), *scope)
        .values(status=JobStatus.CANCELLED.value, finished_at=now, lease_until=None, updated_at=now)
        .returning(Job.workflow_id)
    ).all()
    if cancelled:
        # A task's dependents may run now (run_if failure or always) or be skipped.
        workflow_release.after_settle(session, [cancelled[0].workflow_id], now=now)
        return CancelResult(True, JobStatus.CANCELLED.value)
    status = session.scalar(select(Job.status).where(Job.id == job_id, *scope))
    return CancelResult(False, status)


#: The columns of a job that an update moves (:func:`_move_job`).
_MOVED_COLUMNS = (
    "status", "attempts", "executor", "updated_at", "started_at", "error", "next_attempt_at",
    "lease_until", "finished_at", "output",
)
#: The columns of an attempt's history row (:func:`_record_attempt`).
_ATTEMPT_COLUMNS = (
    "id", "job_id", "attempt", "dispatch_token", "status", "started_at", "finished_at", "output", "error", "executor",
)


def apply_updates(session: Session, messages: list[UpdateMessage], *, lease: float) -> int:
    """Record a batch of executors' updates in order: each attempt's history row always
    (upserted, so a replay changes nothing), the job row only when the update is newer
    (:func:`should_apply`). Returns how many updates moved a job row.

    The batch's jobs are locked with one statement, in id order so that two writers cannot
    deadlock, and their attempt rows are read with one more. The updates are applied to those
    rows in memory; then the rows that changed are written with one statement per table and
    kind (:func:`_write_rows`, one INSERT for new history rows): a replay writes nothing."""
    ids = sorted({m.job_id for m in messages})
    if not ids:
        return 0
    jobs = {
        row.id: _mutable(row)
        for row in session.execute(
            select(Job.id, Job.dispatch_token, Job.workflow_id, *(getattr(Job, name) for name in _MOVED_COLUMNS))
            .where(Job.id.in_(ids))
            .order_by(Job.id)
            .with_for_update()
        )
    }
    attempts = _attempt_rows(session, list(jobs))
    jobs_before = {key: vars(job).copy() for key, job in jobs.items()}
    attempts_before = {key: vars(row).copy() for key, row in attempts.items()}
    moved = 0
    settled: set[Any] = set()  # workflows of the tasks that ended here
    for message in messages:
        job = jobs.get(message.job_id)
        if job is None:
            log.warning("update for unknown job %s ignored", message.job_id)
            continue
        _record_attempt(attempts, message)
        if _move_job(job, message, lease):
            moved += 1
            if job.workflow_id is not None and message.status in _TERMINAL:
                settled.add(job.workflow_id)
    _write_rows(session, Job, [
        {name: getattr(job, name) for name in ("id", *_MOVED_COLUMNS)}
        for key, job in jobs.items() if vars(job) != jobs_before[key]
    ])
    _write_rows(session, JobAttempt, [
        vars(row) for key, row in attempts.items() if key in attempts_before and vars(row) != attempts_before[key]
    ])
    new = [
        {name: value for name, value in vars(row).items() if name != "id"}
        for key, row in attempts.items() if key not in attempts_before
    ]
    if new:
        session.execute(insert(JobAttempt), new)
    workflow_release.after_settle(session, settled, now=clock.utcnow())
    return moved


def apply_update(session: Session, message: UpdateMessage, *, lease: float) -> bool:
    """:func:`apply_updates` for one message."""
    return apply_updates(session, [message], lease=lease) == 1


def _attempt_rows(session: Session, job_ids: list[uuid.UUID]) -> dict[tuple[uuid.UUID, int], SimpleNamespace]:
    """The history rows of these jobs (their :data:`_ATTEMPT_COLUMNS`), by (job id, attempt)."""
    return {
        (row.job_id, row.attempt): _mutable(row)
        for row in session.execute(
            select(*(getattr(JobAttempt, name) for name in _ATTEMPT_COLUMNS)).where(JobAttempt.job_id.in_(job_ids))
        )
    }


def _mutable(row: Row[Any]) -> SimpleNamespace:
    """A row read for an update, as attributes to change; its times aware (SQLite drops the
    offset), so that comparing it with what it was tells whether anything really changed."""
    return SimpleNamespace(**{
        key: ensure_aware(value) if isinstance(value, datetime) else value for key, value in row._mapping.items()
    })


def _move_job(job: Any, message: UpdateMessage, lease: float) -> bool:
    """Apply ``message`` to ``job`` (its dispatch token and :data:`_MOVED_COLUMNS`) if it is
    newer; returns whether it was."""
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


def _record_attempt(rows: dict[tuple[uuid.UUID, int], SimpleNamespace], message: UpdateMessage) -> None:
    """Apply ``message`` to its attempt's history row in ``rows`` (added there if new)."""
    # An attempt ends SUCCESS or FAILED; RETRYING describes the job, not the attempt.
    outcome = JobStatus.FAILED.value if message.status == JobStatus.RETRYING.value else message.status
    row = rows.get((message.job_id, message.attempt))
    if row is None:
        row = SimpleNamespace(**{
            **dict.fromkeys(_ATTEMPT_COLUMNS),
            "job_id": message.job_id, "attempt": message.attempt, "dispatch_token": message.token, "status": outcome,
        })
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


#: (attribute, column) a new job is inserted with; the others (output, error, started_at, …)
#: start NULL. A Core insert of the table: the ORM's bulk insert costs more per row.
_NEW_JOB_COLUMNS = tuple(
    (attr, Job.__mapper__.attrs[attr].columns[0].key)
    for attr in (
        "id", "tenant", "name", "type", "payload", "meta", "status", "execute_at", "priority", "max_retries",
        "timeout_seconds", "misfire_grace_seconds", "attempts", "lost_attempts", "dispatch_token",
        "lease_until", "idempotency_key", "request_hash", "created_at", "updated_at",
        "schedule_id", "scheduled_for", "overlap", "attempt_base", "runs", "trace_context",
        "workflow_id", "task_key",
    )
)
_NEW_JOB_NULLS = ("next_attempt_at", "started_at", "finished_at", "output", "error", "executor", "original_execute_at")
#: Columns a new job may set (an occurrence of a schedule does; a traced create sets
#: trace_context; a workflow's task, its workflow and key), null when it does not.
_NEW_JOB_OPTIONAL = ("schedule_id", "scheduled_for", "overlap", "trace_context", "workflow_id", "task_key")
_INSERT_JOB = insert(Job.__table__)


def _complete(job: dict[str, Any], now: datetime) -> None:
    """Fill in, in place, every column of a new job that its own fields do not give."""
    job.setdefault("tenant", DEFAULT_TENANT)
    for optional in _NEW_JOB_OPTIONAL:
        job.setdefault(optional, None)
    job.update(
        # A workflow's task with dependencies starts WAITING; every other job SCHEDULED.
        status=job.get("status") or JobStatus.SCHEDULED.value, attempts=0, lost_attempts=0, dispatch_token=0, lease_until=None,
        attempt_base=0, runs=1, created_at=now, updated_at=now, **dict.fromkeys(_NEW_JOB_NULLS),
    )


def _rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{column: job[attr] for attr, column in _NEW_JOB_COLUMNS} for job in jobs]


def add_jobs(
    session: Session, jobs: list[dict[str, Any]], *, claim: Sequence[bool], now: datetime, lease: float
) -> list[DispatchMessage]:
    """Insert new jobs with one set-based statement (a multi-row INSERT per page of rows).

    Each dict holds a job's own fields (id, name, type, payload, meta, execute_at, priority,
    max_retries, timeout_seconds, misfire_grace_seconds, idempotency_key, request_hash) and is
    completed in place with every other column as stored. A job whose ``claim`` flag is set is
    inserted already claimed, exactly as :func:`claim_ids` would leave it (QUEUED, dispatch
    token 1, leased past its due time), and its dispatch message is returned, in order: the
    caller publishes them after the commit and hands back with :func:`unclaim` any that Kafka
    did not take."""
    messages: list[DispatchMessage] = []
    for job, claimed in zip(jobs, claim, strict=True):
        _complete(job, now)
        if claimed:
            fire_at = ensure_aware(job["execute_at"])
            job.update(
                status=JobStatus.QUEUED.value, dispatch_token=1,
                lease_until=max(fire_at, now) + timedelta(seconds=lease),
            )
            messages.append(_dispatch_message(SimpleNamespace(**job), fire_at))  # type: ignore[arg-type]
    if jobs:
        session.execute(_INSERT_JOB, _rows(jobs))
    return messages


def add_occurrences(session: Session, jobs: list[dict[str, Any]], *, now: datetime) -> list[uuid.UUID]:
    """Insert schedule occurrences (jobs with ``schedule_id`` and ``scheduled_for``), SCHEDULED,
    skipping each one whose (schedule_id, scheduled_for) exists already: an occurrence is made
    once, whoever makes it. Returns the ids of those inserted."""
    if not jobs:
        return []
    for job in jobs:
        _complete(job, now)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    statement = (
        dialect_insert(Job.__table__)
        .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"])
        .returning(Job.__table__.c.id)
    )
    inserted: list[uuid.UUID] = []
    for start in range(0, len(jobs), 1000):
        inserted += session.scalars(statement.values(_rows(jobs[start:start + 1000]))).all()
    return inserted


def unclaim_all(session: Session, messages: Sequence[DispatchMessage], *, now: datetime) -> set[uuid.UUID]:
    """:func:`unclaim` for many dispatches at once (a batch whose publish failed): one UPDATE
    per page of jobs that share a dispatch token and attempt, instead of one per job. Returns
    the jobs handed back."""
    groups: dict[tuple[int, int, datetime | None], list[uuid.UUID]] = {}
    for message in messages:
        retry_at = message.execute_at if message.attempt > 1 else None
        groups.setdefault((message.token, message.attempt, retry_at), []).append(message.job_id)
    handed_back: set[uuid.UUID] = set()
    for (token, attempt, retry_at), ids in groups.items():
        for start in range(0, len(ids), 5000):
            handed_back.update(session.scalars(
                update(Job)
                .where(
                    Job.id.in_(ids[start:start + 5000]),
                    Job.dispatch_token == token,
                    Job.attempts == attempt - 1,
                    Job.status.in_(_IN_FLIGHT),
                )
                .values(status=JobStatus.SCHEDULED.value, lease_until=None, next_attempt_at=retry_at, updated_at=now)
                .returning(Job.id)
            ))
    return handed_back


#: The executor's write-through of attempt ends on PostgreSQL, for the usual case: the attempt
#: it claimed is still the job's current one, RUNNING, with its history row RUNNING. Two
#: statements of a fixed shape for a whole batch, no rows read into Python; whatever they do
#: not match (a lost attempt, a superseded dispatch, a replay) goes through apply_updates.
_ENDS = (
    "WITH v AS (SELECT * FROM unnest(CAST(:ids AS uuid[]), :tokens, :attempts, :statuses, :started,"
    " :finished, :next_at, CAST(:outputs AS json[]), :errors, :executors)"
    " AS v(id, token, attempt, status, started, finished, next_at, output, error, executor)) "
)
_END_BINDS = (
    bindparam("ids", type_=ARRAY(String)), bindparam("tokens", type_=ARRAY(BigInteger)),
    bindparam("attempts", type_=ARRAY(Integer)), bindparam("statuses", type_=ARRAY(String)),
    bindparam("started", type_=ARRAY(DateTime(timezone=True))),
    bindparam("finished", type_=ARRAY(DateTime(timezone=True))),
    bindparam("next_at", type_=ARRAY(DateTime(timezone=True))), bindparam("outputs", type_=ARRAY(String)),
    bindparam("errors", type_=ARRAY(String)), bindparam("executors", type_=ARRAY(String)),
)
_END_JOBS_POSTGRESQL = text(
    _ENDS + "UPDATE jobs SET status = v.status, executor = v.executor, updated_at = v.finished,"
    " started_at = COALESCE(v.started, jobs.started_at), error = v.error,"
    " finished_at = CASE WHEN v.status = 'RETRYING' THEN jobs.finished_at ELSE v.finished END,"
    " output = CASE WHEN v.status = 'RETRYING' THEN jobs.output ELSE v.output END,"
    " next_attempt_at = CASE WHEN v.status = 'RETRYING' THEN v.next_at END,"
    " lease_until = CASE WHEN v.status = 'RETRYING' THEN COALESCE(v.next_at, v.finished) + :lease END"
    " FROM v WHERE jobs.id = v.id AND jobs.dispatch_token = v.token AND jobs.attempts = v.attempt"
    " AND jobs.status = 'RUNNING' RETURNING jobs.id, jobs.workflow_id, jobs.status"
).bindparams(*_END_BINDS)
_END_ATTEMPTS_POSTGRESQL = text(
    _ENDS + "UPDATE job_attempts SET"
    " status = CASE WHEN v.status = 'RETRYING' THEN 'FAILED' ELSE v.status END,"
    " dispatch_token = v.token, executor = v.executor, started_at = COALESCE(v.started, job_attempts.started_at),"
    " finished_at = v.finished, output = v.output, error = v.error"
    " FROM v WHERE job_attempts.job_id = v.id AND job_attempts.attempt = v.attempt"
    " AND job_attempts.status = 'RUNNING' RETURNING job_attempts.job_id"
).bindparams(*_END_BINDS)


def end_attempts(session: Session, messages: list[UpdateMessage], *, lease: float) -> int:
    """The executor's write-through of the ends of attempts it ran: the same result as
    :func:`apply_updates`, with the usual case (the attempt still current and RUNNING, ended
    once) written by two set-based statements on PostgreSQL; the rest through
    :func:`apply_updates`. Returns how many updates moved a job row."""
    ends = [m for m in messages if m.status != JobStatus.RUNNING.value]
    if session.get_bind().dialect.name != "postgresql" or not ends or len({m.job_id for m in ends}) != len(ends):
        return apply_updates(session, messages, lease=lease)
    params = dict(
        ids=[str(m.job_id) for m in ends], tokens=[m.token for m in ends], attempts=[m.attempt for m in ends],
        statuses=[m.status for m in ends], started=[m.started_at for m in ends],
        finished=[m.finished_at or m.at for m in ends], next_at=[m.next_attempt_at for m in ends],
        outputs=[None if m.output is None else json.dumps(m.output) for m in ends],
        errors=[m.error for m in ends], executors=[m.executor for m in ends], lease=timedelta(seconds=lease),
    )
    # The jobs are locked in id order first, as apply_updates does, so two writers cannot deadlock.
    session.execute(
        select(Job.id).where(Job.id.in_(sorted({m.job_id for m in ends}))).order_by(Job.id).with_for_update()
    ).all()
    ended = session.execute(_END_JOBS_POSTGRESQL, params).all()
    moved = {uuid.UUID(str(row[0])) for row in ended}
    recorded = {uuid.UUID(str(row[0])) for row in session.execute(_END_ATTEMPTS_POSTGRESQL, params)}
    rest = [m for m in messages if m.status == JobStatus.RUNNING.value or m.job_id not in moved or m.job_id not in recorded]
    count = len(moved) + (apply_updates(session, rest, lease=lease) if rest else 0)
    workflow_release.after_settle(
        session, [row.workflow_id for row in ended if row.workflow_id is not None and row.status in _TERMINAL],
        now=clock.utcnow(),
    )
    return count


def prune_audit(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` audit records written before ``before``, oldest first; returns
    how many."""
    oldest = select(AuditRecord.id).where(AuditRecord.at < before).order_by(AuditRecord.at).limit(limit)
    return session.execute(delete(AuditRecord).where(AuditRecord.id.in_(oldest))).rowcount or 0


def prune_finished(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` jobs that finished (SUCCESS, FAILED, CANCELLED, SKIPPED) before
    ``before``, oldest first, with their history (the foreign key cascades); returns how many.
    Rows another transaction holds are skipped, not waited for."""
    oldest = (
        select(Job.id)
        # A workflow's tasks go with their workflow (common.core.workflows.prune_finished).
        .where(Job.status.in_(_TERMINAL), Job.finished_at < before, Job.workflow_id.is_(None))
        .order_by(Job.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.execute(delete(Job).where(Job.id.in_(oldest))).rowcount or 0
