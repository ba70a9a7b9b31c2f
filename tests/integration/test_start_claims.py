"""The executor's batched start claim (one statement for many attempts) and its lease
heartbeat, on PostgreSQL and on SQLite (the local run): the same compare-and-set per attempt
as a single claim, which also reads what the attempt runs from its row."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from common.core import store
from common.core.messages import DispatchMessage, UpdateMessage, encode_dispatch
from common.core.models import Job, JobAttempt
from common.infra.clock import ensure_aware, utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.helpers import add_job, get_job




def dispatch(settings: Settings, due_in: float) -> DispatchMessage:
    job_id = add_job(settings, due_in=due_in)
    now = utcnow()
    with session_scope(settings) as session:
        (message,) = store.claim_ids(session, [job_id], now=now, lease=30).messages
    return message


def test_one_statement_claims_exactly_the_current_unstarted_attempts(database: Settings) -> None:
    now = utcnow()
    ready = [dispatch(database, due_in=0.3) for _ in range(3)]
    cancelled = dispatch(database, due_in=0.3)
    superseded = dispatch(database, due_in=0.3)
    with session_scope(database) as session:
        assert store.cancel(session, cancelled.job_id, now=now).cancelled
        # The scanner dispatched it again (lease ran out): the old token must not start.
        session.execute(
            update(Job).where(Job.id == superseded.job_id).values(dispatch_token=superseded.token + 1)
        )
    batch = ready + [cancelled, superseded]
    with session_scope(database) as session:
        claimed = store.claim_starts(session, batch, executor="e1", now=now, lease=30)
    assert set(claimed) == {store.attempt_key(m) for m in ready}
    with session_scope(database) as session:  # a duplicate of the batch claims nothing again
        assert store.claim_starts(session, batch, executor="e2", now=now, lease=30) == {}
    for message in ready:
        job = get_job(database, message.job_id)
        assert (job.status, job.attempts, job.executor) == ("RUNNING", 1, "e1")
        # started_at is the planned start: the due time, never before it.
        assert ensure_aware(job.started_at) == ensure_aware(message.execute_at)
        with session_scope(database) as session:
            (row,) = session.scalars(select(JobAttempt).where(JobAttempt.job_id == message.job_id)).all()
            assert (row.attempt, row.status, row.executor) == (1, "RUNNING", "e1")
            # Claimed for its imminent start: a cancel now answers "too late" (409).
            result = store.cancel(session, message.job_id, now=now)
            assert not result.cancelled and result.status == "RUNNING"
    assert get_job(database, cancelled.job_id).attempts == 0
    assert get_job(database, superseded.job_id).attempts == 0


def test_an_overdue_attempt_is_claimed_with_its_real_start(database: Settings) -> None:
    message = dispatch(database, due_in=-5)
    now = utcnow()
    with session_scope(database) as session:
        assert store.claim_starts(session, [message], executor="e", now=now, lease=30)
    assert ensure_aware(get_job(database, message.job_id).started_at) == now


def test_heartbeat_extends_only_the_leases_of_attempts_still_running(database: Settings) -> None:
    now = utcnow()
    running, finished = dispatch(database, due_in=0), dispatch(database, due_in=0)
    with session_scope(database) as session:
        assert len(store.claim_starts(session, [running, finished], executor="e", now=now, lease=30)) == 2
        session.execute(update(Job).where(Job.id == finished.job_id).values(status="SUCCESS"))
    later = now + timedelta(seconds=20)
    with session_scope(database) as session:
        assert store.extend_leases(session, [running, finished], now=later, lease=30) == 1
    assert ensure_aware(get_job(database, running.job_id).lease_until) == later + timedelta(seconds=30)
    assert ensure_aware(get_job(database, finished.job_id).lease_until) == now + timedelta(seconds=30)


def _end(message: DispatchMessage, status: str, at, **fields) -> UpdateMessage:  # type: ignore[no-untyped-def]
    return UpdateMessage(
        job_id=message.job_id, token=message.token, status=status, attempt=message.attempt, at=at,
        executor="e", started_at=at - timedelta(seconds=1), finished_at=at, **fields,
    )


def _state(settings: Settings, job_id) -> tuple:  # type: ignore[no-untyped-def]
    job = get_job(settings, job_id)
    with session_scope(settings) as session:
        rows = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)).all()
        history = [(r.attempt, r.status, r.dispatch_token, r.executor, r.started_at, r.finished_at, r.output, r.error) for r in rows]
    return (job.status, job.attempts, job.executor, job.started_at, job.finished_at, job.output, job.error,
            job.next_attempt_at, job.lease_until, job.updated_at, history)


@pytest.mark.parametrize("status,fields", [
    ("SUCCESS", {"output": {"ok": True, "n": [1, 2]}}),
    ("RETRYING", {"error": "HttpFailed: HTTP 500", "next_attempt_at": "later"}),
    ("FAILED", {"error": "JobFailed: boom"}),
])
def test_the_executors_write_through_ends_attempts_exactly_as_the_result_writer_would(
    database: Settings, status: str, fields: dict,
) -> None:
    now = utcnow()
    if fields.get("next_attempt_at") == "later":
        fields = {**fields, "next_attempt_at": now + timedelta(seconds=4)}
    fast, general = dispatch(database, due_in=0), dispatch(database, due_in=0)
    with session_scope(database) as session:
        assert len(store.claim_starts(session, [fast, general], executor="e", now=now, lease=30)) == 2
    at = now + timedelta(seconds=2)
    with session_scope(database) as session:
        assert store.end_attempts(session, [_end(fast, status, at, **fields)], lease=30) == 1
        assert store.apply_updates(session, [_end(general, status, at, **fields)], lease=30) == 1
    assert _state(database, fast.job_id) == _state(database, general.job_id)
    assert get_job(database, fast.job_id).status == status
    with session_scope(database) as session:  # a replay changes nothing
        assert store.end_attempts(session, [_end(fast, status, at, **fields)], lease=30) == 0


def test_an_end_reported_after_its_attempt_was_marked_lost_keeps_the_mark(database: Settings) -> None:
    now = utcnow()
    message = dispatch(database, due_in=0)
    with session_scope(database) as session:
        assert store.claim_starts(session, [message], executor="e", now=now, lease=1)
    later = now + timedelta(seconds=5)
    with session_scope(database) as session:  # the lease ran out: the scanner marks it lost, dispatches again
        (again,) = store.claim_due(session, now=later, horizon=later, lease=30, limit=10).messages
    assert again.token == message.token + 1
    with session_scope(database) as session:
        assert store.end_attempts(session, [_end(message, "SUCCESS", later, output={"late": True})], lease=30) == 0
    (row,) = _state(database, message.job_id)[-1]
    assert row[1] == "SUCCESS" and row[7].startswith(store.LOST) and "it ended SUCCESS later" in row[7]
    assert get_job(database, message.job_id).status == "QUEUED"  # the new dispatch is untouched


SEALED_HEADERS = {"Authorization": {"encrypted": "gAAAA-not-opened-by-the-store"}, "Accept": "text/plain"}


def test_the_claim_returns_what_the_row_runs_whatever_the_message_says(database: Settings) -> None:
    payload = {"url": "https://hooks.example/good", "headers": SEALED_HEADERS}
    message = dispatch(database, due_in=0.3)
    with session_scope(database) as session:
        session.execute(update(Job).where(Job.id == message.job_id).values(type="http", payload=payload))
    # Altered on the topic: another type, another target, its own limits. The claim reads the row.
    forged = replace(message, type="shell", payload={"argv": ["sh", "-c", "id"]}, timeout_seconds=86400,
                     max_retries=10)
    row = get_job(database, message.job_id)
    with session_scope(database) as session:
        claimed = store.claim_starts(session, [forged], executor="e", now=utcnow(), lease=30)
    assert claimed == {store.attempt_key(message): store.ClaimedRow(
        "http", payload, "default", row.timeout_seconds, row.max_retries)}


def test_a_forged_early_first_attempt_is_not_claimed(settings: Settings) -> None:
    """On PostgreSQL: a dispatch that moves a job's first run before its time claims nothing."""
    message = dispatch(settings, due_in=60)
    early = replace(message, execute_at=utcnow())
    with session_scope(settings) as session:
        assert store.claim_starts(session, [early], executor="e", now=utcnow(), lease=30) == {}
    assert get_job(settings, message.job_id).status == "QUEUED"
    with session_scope(settings) as session:  # the genuine dispatch, at its time, still claims it
        assert store.claim_starts(session, [message], executor="e", now=utcnow(), lease=30)


def test_a_dispatch_naming_another_tenant_than_its_jobs_is_not_claimed(database: Settings) -> None:
    message = dispatch(database, due_in=0.3)
    with session_scope(database) as session:
        session.execute(update(Job).where(Job.id == message.job_id).values(tenant="acme"))
    with session_scope(database) as session:
        assert store.claim_starts(session, [replace(message, tenant="evil")], executor="e", now=utcnow(), lease=30) == {}
        assert not store.claim_start(session, message, executor="e", now=utcnow(), lease=30)  # "default"
    job = get_job(database, message.job_id)
    assert (job.status, job.attempts) == ("QUEUED", 0)
    with session_scope(database) as session:
        claimed = store.claim_starts(session, [replace(message, tenant="acme")], executor="e", now=utcnow(), lease=30)
    assert [row.tenant for row in claimed.values()] == ["acme"]
    assert get_job(database, message.job_id).status == "RUNNING"


def test_a_dispatch_names_its_jobs_tenant_and_carries_no_secret_in_clear(database: Settings) -> None:
    payload = {"url": "https://hooks.example/good", "headers": SEALED_HEADERS}
    job_id = add_job(database, due_in=0.3, type="http", payload=payload, tenant="acme")
    with session_scope(database) as session:
        (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=30).messages
    assert message.tenant == "acme"
    assert message.payload["headers"] == {"Authorization": "***", "Accept": "text/plain"}
    assert "gAAAA" not in encode_dispatch(message).decode()
    with session_scope(database) as session:  # the message as it is claims the job, sealed payload and all
        claimed = store.claim_starts(session, [message], executor="e", now=utcnow(), lease=30)
    assert [(r.type, r.payload, r.tenant) for r in claimed.values()] == [("http", payload, "acme")]


def test_a_direct_dispatch_names_its_jobs_tenant_and_claims_it(database: Settings) -> None:
    now = utcnow()
    job = dict(
        id=uuid.uuid4(), tenant="acme", name="direct", type="http", meta={}, priority=0, max_retries=0,
        payload={"url": "https://hooks.example/good", "headers": SEALED_HEADERS}, execute_at=now,
        timeout_seconds=5.0, misfire_grace_seconds=None, idempotency_key=None, request_hash=None,
    )
    with session_scope(database) as session:
        (message,) = store.add_jobs(session, [job], claim=[True], now=now, lease=30)
    assert message.tenant == "acme" and message.payload["headers"]["Authorization"] == "***"
    with session_scope(database) as session:
        claimed = store.claim_starts(session, [message], executor="e", now=utcnow(), lease=30)
    assert [row.tenant for row in claimed.values()] == ["acme"]
