"""One patch of ``common.infra.clock.utcnow`` sets the time everywhere chronoq reads it: call
sites go through the module at call time, so none keeps a reference of its own."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

import common.infra.clock
from api.app import create_app
from api.context import request_now
from common.core.models import Base, Job
from common.infra.clock import ensure_aware
from common.infra.config import load_settings
from common.infra.db import build_engine
from scheduler_service.scanner import Scanner

#: Far from the real time, so a call site that missed the patch cannot pass by accident.
FIXED = datetime(2031, 5, 6, 7, 8, 9, 250000, tzinfo=timezone.utc)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setattr(common.infra.clock, "utcnow", lambda: FIXED)
    return FIXED


def test_the_api_reads_the_patched_clock_in_and_outside_a_request(fixed_clock: datetime) -> None:
    assert request_now() == fixed_clock
    app = create_app(load_settings({}, database_url="sqlite://"))
    with app.test_request_context("/api/jobs"):
        assert request_now() == fixed_clock


def test_model_timestamps_default_to_the_patched_clock(fixed_clock: datetime) -> None:
    engine = build_engine("sqlite://")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            job = Job(name="n", type="noop", execute_at=fixed_clock + timedelta(hours=1), timeout_seconds=5.0)
            session.add(job)
            session.commit()
            session.refresh(job)  # what the database stored, not the object's own value
            assert ensure_aware(job.created_at) == fixed_clock
            assert ensure_aware(job.updated_at) == fixed_clock
    finally:
        engine.dispose()


def test_the_scanner_reads_the_patched_clock_when_given_none(fixed_clock: datetime) -> None:
    scanner = Scanner(load_settings({}, database_url="sqlite://"), threading.Event(), producer=object())  # type: ignore[arg-type]
    assert scanner.clock() == fixed_clock
