"""The compare-and-set statements on a real PostgreSQL: claims, start, cancel, updates."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import sqlalchemy as sa

from common.core import store
from common.infra.clock import ensure_aware, utcnow
from common.infra.db import get_engine, session_scope
from common.core.messages import UpdateMessage
from common.core.models import JobAttempt
from tests.helpers import add_job, get_job


def claim(settings, now, horizon, limit=100):
    with session_scope(settings) as session:
        return store.claim_due(session, now=now, horizon=horizon, lease=10, limit=limit)


def test_claim_due_takes_due_and_overdue_jobs_only(settings):
    now = utcnow()
    overdue = add_job(settings, due_in=-3600)
    soon = add_job(settings, due_in=30)
    later = add_job(settings, due_in=3600)
    claimed = claim(settings, now, now + timedelta(seconds=60))
    assert {m.job_id for m in claimed.messages} == {overdue, soon}
    assert get_job(settings, soon).status == "QUEUED" and get_job(settings, soon).dispatch_token == 1
    assert get_job(settings, later).status == "SCHEDULED"
    assert claim(settings, now, now + timedelta(seconds=60)).messages == []  # nothing claimed twice


def test_concurrent_claims_never_overlap(settings):
    ids = {add_job(settings, due_in=1) for _ in range(300)}
    now = utcnow()
    results: list[list] = [[] for _ in range(4)]
    together = threading.Barrier(4)  # all four claim from the start, however slowly threads start

    def scanner(slot: int) -> None:
        together.wait(30)
        while True:
            got = claim(settings, now, now + timedelta(seconds=60), limit=7).messages
            if not got:
                return
            results[slot].extend(m.job_id for m in got)

    threads = [threading.Thread(target=scanner, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert sum(1 for r in results if r) > 1  # the scanners really ran side by side


def test_start_claim_is_won_once_and_fenced_by_token(settings):
    job_id = add_job(settings, due_in=0)
    message = claim(settings, utcnow(), utcnow() + timedelta(seconds=5)).messages[0]
    starts = []
    for _ in range(3):
        with session_scope(settings) as session:
            starts.append(store.claim_start(session, message, executor="e", now=utcnow(), lease=10))
    assert starts == [True, False, False]
    job = get_job(settings, job_id)
    assert job.status == "RUNNING" and job.attempts == 1


def test_lease_expiry_redispatches_with_a_new_token(settings):
    job_id = add_job(settings, due_in=0)
    now = utcnow()
    first = claim(settings, now, now + timedelta(seconds=5)).messages[0]
    later = now + timedelta(seconds=11)  # lease of 10 s ran out, never started
    second = claim(settings, later, later).messages[0]
    assert second.job_id == job_id and second.token == first.token + 1 and second.attempt == 1
    with session_scope(settings) as session:
        assert not store.claim_start(session, first, executor="old", now=later, lease=10)
        assert store.claim_start(session, second, executor="new", now=later, lease=10)


def test_lost_last_attempt_fails_the_job(settings):
    job_id = add_job(settings, due_in=0, max_retries=0)
    now = utcnow()
    message = claim(settings, now, now + timedelta(seconds=5)).messages[0]
    with session_scope(settings) as session:
        store.claim_start(session, message, executor="e", now=now, lease=10)
    later = now + timedelta(seconds=100)
    claimed = claim(settings, later, later)
    assert claimed.exhausted == [job_id] and claimed.messages == []
    assert get_job(settings, job_id).status == "FAILED"


def test_cancel_before_start_wins_and_start_then_fails(settings):
    job_id = add_job(settings, due_in=0)
    message = claim(settings, utcnow(), utcnow() + timedelta(seconds=5)).messages[0]
    with session_scope(settings) as session:
        assert store.cancel(session, job_id, now=utcnow()).cancelled
    with session_scope(settings) as session:
        assert not store.claim_start(session, message, executor="e", now=utcnow(), lease=10)
    assert get_job(settings, job_id).status == "CANCELLED"


def test_cancel_after_start_is_refused(settings):
    job_id = add_job(settings, due_in=0)
    message = claim(settings, utcnow(), utcnow() + timedelta(seconds=5)).messages[0]
    with session_scope(settings) as session:
        store.claim_start(session, message, executor="e", now=utcnow(), lease=10)
    with session_scope(settings) as session:
        result = store.cancel(session, job_id, now=utcnow())
    assert not result.cancelled and result.status == "RUNNING"


def update(job_id, token, status, attempt, **kw):
    now = utcnow()
    return UpdateMessage(job_id=job_id, token=token, status=status, attempt=attempt, at=now, executor="e",
                         started_at=kw.pop("started_at", now), **kw)


def test_apply_update_is_idempotent_and_monotonic(settings):
    job_id = add_job(settings, due_in=0)
    message = claim(settings, utcnow(), utcnow() + timedelta(seconds=5)).messages[0]
    t = message.token
    sequence = [
        update(job_id, t, "RUNNING", 1),
        update(job_id, t, "RETRYING", 1, error="boom", next_attempt_at=utcnow()),
        update(job_id, t, "RUNNING", 2),
        update(job_id, t, "SUCCESS", 2, output={"ok": True}, finished_at=utcnow()),
    ]
    # Deliver everything twice, the second time in reverse order.
    for m in sequence + list(reversed(sequence)):
        with session_scope(settings) as session:
            store.apply_update(session, m, lease=10)
    job = get_job(settings, job_id)
    assert job.status == "SUCCESS" and job.attempts == 2 and job.output == {"ok": True}
    with session_scope(settings) as session:
        rows = session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.attempt).all()
        assert [(r.attempt, r.status, r.error) for r in rows] == [(1, "FAILED", "boom"), (2, "SUCCESS", None)]


def test_scanner_queries_use_their_partial_indexes(settings):
    """The scanner must not read the whole table to find one minute of work."""
    import sqlalchemy as sa

    from common.infra.db import get_engine
    from common.core.models import Job

    now = utcnow()
    rows = [dict(id=uuid.uuid4(), name="n", type="noop", payload={}, meta={},
                 status="SUCCESS" if i % 10 else "SCHEDULED", execute_at=now + timedelta(seconds=i),
                 priority=0, max_retries=3, timeout_seconds=30.0, attempts=0, dispatch_token=0,
                 created_at=now, updated_at=now) for i in range(20000)]
    with get_engine(settings).begin() as conn:
        conn.execute(sa.insert(Job), rows)
        conn.execute(sa.text("ANALYZE jobs"))
    with session_scope(settings) as session:
        captured = []

        @sa.event.listens_for(session.bind, "before_cursor_execute")
        def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            if statement.lstrip().upper().startswith("SELECT") and "FOR UPDATE" in statement:
                captured.append((statement, parameters))

        store.claim_due(session, now=now, horizon=now + timedelta(seconds=120), lease=10, limit=500)
        sa.event.remove(session.bind, "before_cursor_execute", capture)
        plans = []
        for statement, parameters in captured:
            cursor = session.connection().connection.cursor()
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    assert len(plans) == 2
    assert "ix_jobs_due" in plans[0], plans[0]
    assert "ix_jobs_lease" in plans[1], plans[1]
    assert all("Seq Scan" not in plan for plan in plans), plans


def test_a_lost_attempt_that_reports_its_end_later_keeps_the_lost_mark(settings):
    """An executor silent past its lease but alive: its attempt is marked lost and re-run with
    the same idempotency key; its late SUCCESS is recorded without erasing why it was re-run."""
    job_id = add_job(settings, due_in=0)
    now = utcnow()
    first = claim(settings, now, now + timedelta(seconds=5)).messages[0]
    with session_scope(settings) as session:
        assert store.claim_start(session, first, executor="slow", now=now, lease=10)
    later = now + timedelta(seconds=11)
    rerun = claim(settings, later, later).messages[0]
    assert rerun.attempt == 2 and rerun.idempotency_key == first.idempotency_key
    with session_scope(settings) as session:
        store.apply_updates(session, [update(job_id, first.token, "SUCCESS", 1, finished_at=later)], lease=10)
        rows = session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.attempt).all()
        assert [(r.attempt, r.status) for r in rows] == [(1, "SUCCESS")]
        assert rows[0].error.startswith("lost: no word from executor slow") and "ended SUCCESS later" in rows[0].error
    assert get_job(settings, job_id).status == "QUEUED"  # the stale token moves nothing of the job


def test_an_attempt_not_running_is_not_counted_lost(settings):
    job_id = add_job(settings, due_in=0)
    now = utcnow()
    first = claim(settings, now, now + timedelta(seconds=5)).messages[0]
    with session_scope(settings) as session:
        assert store.claim_start(session, first, executor="e", now=now, lease=10)
        # The attempt's row already ended (its update came), the job row did not follow.
        session.query(JobAttempt).filter_by(job_id=job_id).update({"status": "SUCCESS"})
    later = now + timedelta(seconds=11)
    rerun = claim(settings, later, later).messages[0]
    assert rerun.idempotency_key != first.idempotency_key and get_job(settings, job_id).lost_attempts == 0


# The claim and the result batch write every row with one statement on PostgreSQL and with an
# executemany on SQLite (the local run): both must leave the same rows behind.




def test_a_claim_leaves_each_job_as_its_message_says(database):
    now = utcnow()
    first = add_job(database, due_in=-5)  # overdue first dispatch: fires at its due time
    handed_back = add_job(database, due_in=-60, attempts=1, dispatch_token=3, error="boom",
                          next_attempt_at=now + timedelta(seconds=20))  # a retry waiting out its backoff
    later = add_job(database, due_in=3600)
    with session_scope(database) as session:
        claimed = store.claim_due(session, now=now, horizon=now + timedelta(seconds=60), lease=10, limit=100)
    messages = {m.job_id: m for m in claimed.messages}
    assert set(messages) == {first, handed_back}
    assert (messages[first].token, messages[first].attempt) == (1, 1)
    assert messages[first].execute_at == ensure_aware(get_job(database, first).execute_at)
    assert (messages[handed_back].token, messages[handed_back].attempt) == (4, 2)
    assert messages[handed_back].execute_at == now + timedelta(seconds=20)
    for job_id, message in messages.items():
        job = get_job(database, job_id)
        assert (job.status, job.dispatch_token, job.lost_attempts) == ("QUEUED", message.token, 0)
        assert ensure_aware(job.lease_until) == max(message.execute_at, now) + timedelta(seconds=10)
    assert get_job(database, later).status == "SCHEDULED"


def test_a_run_lost_with_its_executor_is_dispatched_again_then_failed_when_none_is_left(database):
    job_id = add_job(database, due_in=0, max_retries=1)
    now = utcnow()
    for attempt in (1, 2):
        with session_scope(database) as session:
            (message,) = store.claim_due(session, now=now, horizon=now, lease=10, limit=10).messages
            assert message.attempt == attempt and message.key_attempt == 1  # a lost run keeps its key
            assert store.claim_start(session, message, executor=f"e{attempt}", now=now, lease=10)
        now += timedelta(seconds=11)  # silent past its lease
    with session_scope(database) as session:
        claimed = store.claim_due(session, now=now, horizon=now, lease=10, limit=10)
    assert claimed.messages == [] and claimed.exhausted == [job_id]
    job = get_job(database, job_id)
    assert (job.status, job.lost_attempts, job.lease_until) == ("FAILED", 2, None)
    assert job.error == "attempt 2 lost (lease expired) and no retries left"
    with session_scope(database) as session:
        rows = session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.attempt).all()
        assert [(r.attempt, r.status, r.error.split(" before")[0]) for r in rows] == [
            (1, "FAILED", "lost: no word from executor e1"), (2, "FAILED", "lost: no word from executor e2"),
        ]


def test_a_result_batch_is_written_once_and_its_replay_writes_nothing(database):
    job_id = add_job(database, due_in=0)
    with session_scope(database) as session:
        token = store.claim_ids(session, [job_id], now=utcnow(), lease=10).messages[0].token
    batch = [
        update(job_id, token, "RUNNING", 1),
        update(job_id, token, "RETRYING", 1, error="boom", next_attempt_at=utcnow()),
        update(job_id, token, "RUNNING", 2),
        update(job_id, token, "SUCCESS", 2, output={"ok": True}, finished_at=utcnow()),
    ]
    with session_scope(database) as session:
        assert store.apply_updates(session, batch, lease=10) == 4
    job = get_job(database, job_id)
    assert (job.status, job.attempts, job.output, job.lease_until) == ("SUCCESS", 2, {"ok": True}, None)
    written: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
            written.append(statement)

    engine = get_engine(database)
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope(database) as session:  # the executor already wrote it through, say
            assert store.apply_updates(session, batch, lease=10) == 0
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert written == []
    with session_scope(database) as session:
        rows = session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.attempt).all()
        assert [(r.attempt, r.status, r.error) for r in rows] == [(1, "FAILED", "boom"), (2, "SUCCESS", None)]
