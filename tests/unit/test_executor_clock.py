"""The executor never fires before execute_at by its own clock, even if its timer wakes early."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from executor_service import runner

DUE = datetime(2026, 11, 22, 14, 3, 7, 250000, tzinfo=timezone.utc)


class FakeClock:
    """A clock that advances only when the code sleeps (no real waiting)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def utcnow(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        # A timer that wakes a hair early, as OS timers may (but never before it was set).
        self.now += timedelta(seconds=max(seconds - 0.0002, seconds / 2, 0.000001))


@pytest.mark.parametrize("early_by", [5.0, 0.003, 0.000001])
def test_sleep_until_returns_only_once_the_moment_has_passed(monkeypatch, early_by: float) -> None:
    clock = FakeClock(DUE - timedelta(seconds=early_by))
    monkeypatch.setattr(runner.clock, "utcnow", clock.utcnow)
    monkeypatch.setattr(runner.asyncio, "sleep", clock.sleep)
    asyncio.run(runner.sleep_until(DUE))
    assert clock.now >= DUE
    assert clock.sleeps  # it waited
    if early_by > 0.001:
        assert len(clock.sleeps) >= 2  # it noticed the early wake and slept again


def test_sleep_until_does_not_sleep_when_already_due(monkeypatch) -> None:
    clock = FakeClock(DUE + timedelta(milliseconds=1))
    monkeypatch.setattr(runner.clock, "utcnow", clock.utcnow)
    monkeypatch.setattr(runner.asyncio, "sleep", clock.sleep)
    asyncio.run(runner.sleep_until(DUE))
    assert clock.sleeps == []
