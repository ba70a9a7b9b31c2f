"""Retention: finished jobs and their history, and audit records, deleted in batches once they
are older than their retention, on both databases; unfinished and recent ones are kept."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from common.core.models import AuditRecord, Job, JobAttempt
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import get_engine, session_scope
from scheduler_service.maintenance import Maintenance
from tests.helpers import add_job


def count(settings: Settings, table: str) -> int:
    with get_engine(settings).connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def test_a_pass_deletes_what_outlived_its_retention_in_batches(database: Settings) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=40), now - timedelta(days=5)
    doomed = [add_job(database, status=status, attempts=1, finished_at=old)
              for status in ("SUCCESS", "FAILED", "CANCELLED") for _ in range(3)]
    kept = [
        add_job(database, status="SUCCESS", attempts=1, finished_at=recent),       # too recent
        add_job(database, status="SCHEDULED"),                                     # not finished
        add_job(database, status="RUNNING", attempts=1, started_at=old),            # not finished
        add_job(database, status="RETRYING", attempts=1, finished_at=old),          # between attempts
    ]
    with session_scope(database) as session:
        for job_id in doomed + kept:
            session.add(JobAttempt(job_id=job_id, attempt=1, dispatch_token=1, status="SUCCESS", started_at=old))
        for days in (100, 95, 30):
            session.add(AuditRecord(at=now - timedelta(days=days), subject="s", action="a", outcome=200))

    maintenance = Maintenance(database, threading.Event(), utcnow, batch=4, pause=0)
    result = maintenance.run_once(now)
    assert (result.jobs, result.audit) == (9, 2)
    with session_scope(database) as session:
        left = set(session.scalars(sa.select(Job.id)))
        history = set(session.scalars(sa.select(JobAttempt.job_id)))
    assert left == set(kept) and history == set(kept)  # the history went with its jobs
    assert count(database, "audit_log") == 1
    assert maintenance.run_once(now) == type(result)()  # nothing left: a second pass deletes nothing


def test_the_maintenance_thread_stops_with_the_service(settings: Settings) -> None:
    stop = threading.Event()
    add_job(settings, status="SUCCESS", attempts=1, finished_at=utcnow() - timedelta(days=60))
    maintenance = Maintenance(settings, stop, utcnow).start()
    try:
        deadline = utcnow() + timedelta(seconds=10)
        while count(settings, "jobs") and utcnow() < deadline:
            stop.wait(0.05)
        assert count(settings, "jobs") == 0  # the first pass runs at start
    finally:
        stop.set()
        maintenance.join(5)
    assert maintenance.thread is not None and not maintenance.thread.is_alive()
