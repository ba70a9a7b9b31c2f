"""GET /api/overview and GET /api/me over the real database and broker: jobs due per minute,
lateness of the last minutes' first attempts, the dead-letter topic's size from Kafka's offsets,
and tenant scoping."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api import overview as overview_api
from common.core import apikeys, overview
from common.core.models import JobAttempt
from common.core.roles import Role
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.deadletter import DeadLetter
from common.infra.kafka import Producer, topic_size
from tests.helpers import add_job


def _attempt(settings: Settings, job_id: Any, attempt: int, started: datetime) -> None:
    with session_scope(settings) as session:
        session.add(JobAttempt(job_id=job_id, attempt=attempt, dispatch_token=1, status="SUCCESS",
                               started_at=started, finished_at=started + timedelta(milliseconds=5)))


def seed(settings: Settings, now: datetime, tenant: str = "acme") -> None:
    """Jobs due in minutes 0, 1 (two) and 2 from ``now``, one past the window, and first
    attempts of runs started 50 ms to 2 s late within the last 5 minutes (plus ones not to count)."""
    for seconds, status in ((20, "SCHEDULED"), (70, "SCHEDULED"), (100, "QUEUED"), (150, "SCHEDULED"),
                            (700, "SCHEDULED"), (30, "RUNNING")):
        add_job(settings, execute_at=now + timedelta(seconds=seconds), status=status, tenant=tenant)
    for late_ms, ago in ((100, 60), (300, 120), (2000, 200)):
        due = now - timedelta(seconds=ago)
        job = add_job(settings, execute_at=due, status="SUCCESS", attempts=1, tenant=tenant)
        _attempt(settings, job, 1, due + timedelta(milliseconds=late_ms))
    # Not measured: a retry (its due time is not kept), and a start before the window.
    retried = add_job(settings, execute_at=now - timedelta(seconds=100), status="SUCCESS", attempts=2, tenant=tenant)
    _attempt(settings, retried, 1, now - timedelta(seconds=99))
    _attempt(settings, retried, 2, now - timedelta(seconds=10))
    old = add_job(settings, execute_at=now - timedelta(minutes=20), status="SUCCESS", attempts=1, tenant=tenant)
    _attempt(settings, old, 1, now - timedelta(minutes=20) + timedelta(seconds=30))
    # A rerun job: its first run's first attempt is history; the rerun's (attempt 2) counts.
    rerun = add_job(settings, execute_at=now - timedelta(seconds=30), status="SUCCESS", attempts=2, attempt_base=1,
                    runs=2, tenant=tenant)
    _attempt(settings, rerun, 1, now - timedelta(seconds=40))
    _attempt(settings, rerun, 2, now - timedelta(seconds=30) + timedelta(milliseconds=50))


def test_due_per_minute_and_lateness(database: Settings) -> None:
    now = utcnow()
    seed(database, now)
    add_job(database, execute_at=now + timedelta(seconds=20), tenant="other")
    with session_scope(database) as session:
        due = overview.due_per_minute(session, now=now, minutes=10, tenant="acme")
        every = overview.due_per_minute(session, now=now, minutes=3, tenant=None)
        late = overview.lateness(session, now=now, minutes=5, tenant="acme")
        none = overview.lateness(session, now=now, minutes=5, tenant="nobody")
    assert [m["count"] for m in due] == [1, 2, 1, 0, 0, 0, 0, 0, 0, 0]  # RUNNING and minute 11 left out
    assert [m["start"] for m in due][:2] == [now, now + timedelta(minutes=1)]
    assert [m["count"] for m in every] == [2, 2, 1]
    # 50 (the rerun's first attempt), 100, 300, 1000 (the retried job's first attempt), 2000
    assert late == {"p50": 300.0, "p99": 2000.0, "max": 2000.0, "measured": 5}
    assert none == {"p50": None, "p99": None, "max": None, "measured": 0}


@pytest.fixture
def secure_app(kafka_settings: Settings) -> Iterator[Flask]:
    overview_api._DEAD_LETTERS = overview_api._DeadLetterCount()  # nothing cached from another test
    app = create_app(replace(kafka_settings, auth_enabled=True))
    yield app
    app.extensions["chronoq"].close()


def key(settings: Settings, tenant: str, role: str) -> dict[str, str]:
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant=tenant, role=Role.parse(role), name=f"t-{role}", created_by="test",
                                  keyring=None, now=utcnow())
    return {"Authorization": f"Bearer {made.key}"}


def test_overview_endpoint_scopes_and_counts_dead_letters(secure_app: Flask, kafka_settings: Settings) -> None:
    client: FlaskClient = secure_app.test_client()
    seed(kafka_settings, utcnow())
    add_job(kafka_settings, due_in=20, tenant="other")
    producer = Producer(kafka_settings)
    try:
        for n in range(3):
            assert producer.dead_letter(DeadLetter(reason=f"test {n}", job_id=str(n)), wait=True)
    finally:
        producer.close()
    assert topic_size(kafka_settings, kafka_settings.topic_dlq) == 3

    viewer, admin = key(kafka_settings, "acme", "viewer"), key(kafka_settings, "ops", "admin")
    mine = client.get("/api/overview?due_minutes=3", headers=viewer)
    assert mine.status_code == 200, mine.get_json()
    body = mine.get_json()
    assert body["by_status"]["SCHEDULED"] == 4 and body["total"] == 12  # the other tenant's job is not in it
    assert sum(m["count"] for m in body["due"]) == 4 and len(body["due"]) == 3
    assert body["lateness_ms"]["measured"] == 5 and body["lateness_minutes"] == 5
    assert body["dead_letters"]["count"] is None and "admins" in body["dead_letters"]["note"]

    everyone = client.get("/api/overview", headers=admin).get_json()
    assert everyone["total"] == 13 and len(everyone["due"]) == 10
    assert everyone["dead_letters"] == {"topic": kafka_settings.topic_dlq, "count": 3, "note": None}

    assert client.get("/api/overview").status_code == 401
    bad = client.get("/api/overview?due_minutes=61&lateness_minutes=0", headers=viewer)
    assert bad.status_code == 422 and set(bad.get_json()["errors"]["query"]) == {"due_minutes", "lateness_minutes"}


def test_dead_letter_count_unavailable_is_said_not_raised(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    overview_api._DEAD_LETTERS = overview_api._DeadLetterCount()
    monkeypatch.setattr(overview_api, "DLQ_TIMEOUT_MS", 300)
    app = create_app(replace(settings, kafka_bootstrap="127.0.0.1:1"))
    try:
        body = app.test_client().get("/api/overview").get_json()
    finally:
        app.extensions["chronoq"].close()
    assert body["dead_letters"]["count"] is None and "broker" in body["dead_letters"]["note"]


def test_me_names_the_caller(secure_app: Flask, kafka_settings: Settings) -> None:
    client = secure_app.test_client()
    me = client.get("/api/me", headers=key(kafka_settings, "acme", "writer")).get_json()
    assert me["tenant"] == "acme" and me["role"] == "writer" and me["auth_enabled"] is True
    assert me["subject"].startswith("key:") and me["subject"].endswith(":t-writer") and me["all_tenants"] is False
    assert client.get("/api/me", headers=key(kafka_settings, "ops", "admin")).get_json()["all_tenants"] is True
    assert client.get("/api/me").status_code == 401
