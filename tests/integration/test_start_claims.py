"""The executor's batched start claim (one statement for many attempts) and its lease
heartbeat, on PostgreSQL and on SQLite (the local run): the same compare-and-set per attempt
as a single claim."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select, update

from common.core import store
from common.core.messages import DispatchMessage
from common.core.migrate import upgrade
from common.core.models import Job, JobAttempt
from common.infra.clock import ensure_aware, utcnow
from common.infra.config import Settings, load_settings
from common.infra.db import session_scope
from tests.helpers import add_job, get_job


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "postgresql":
        yield request.getfixturevalue("settings")
        return
    local = load_settings({}, database_url=f"sqlite:///{tmp_path / 'chronoq.db'}")
    upgrade(local)
    yield local


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
    assert claimed == {store.attempt_key(m) for m in ready}
    with session_scope(database) as session:  # a duplicate of the batch claims nothing again
        assert store.claim_starts(session, batch, executor="e2", now=now, lease=30) == set()
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
