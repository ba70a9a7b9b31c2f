from datetime import datetime, timedelta, timezone

from freezegun import freeze_time

from common.infra.clock import utcnow
from common.core.windows import dispatch_horizon, needs_direct_dispatch, next_boundary, window_start
from scheduler_service.scanner import next_wake

UTC = timezone.utc


def test_window_start_and_boundary_on_the_minute():
    now = datetime(2026, 11, 22, 14, 3, 7, 250000, tzinfo=UTC)
    assert window_start(now, 60) == datetime(2026, 11, 22, 14, 3, tzinfo=UTC)
    assert next_boundary(now, 60) == datetime(2026, 11, 22, 14, 4, tzinfo=UTC)


def test_boundary_is_strictly_after_now_when_on_a_boundary():
    now = datetime(2026, 11, 22, 14, 3, tzinfo=UTC)
    assert window_start(now, 60) == now
    assert next_boundary(now, 60) == now + timedelta(minutes=1)


def test_horizon_covers_current_and_next_window():
    now = datetime(2026, 11, 22, 14, 3, 59, tzinfo=UTC)
    assert dispatch_horizon(now, 60) == datetime(2026, 11, 22, 14, 5, tzinfo=UTC)


def test_short_interval_windows():
    now = datetime(2026, 11, 22, 14, 3, 7, 500000, tzinfo=UTC)
    assert window_start(now, 2) == datetime(2026, 11, 22, 14, 3, 6, tzinfo=UTC)
    assert dispatch_horizon(now, 2) == datetime(2026, 11, 22, 14, 3, 10, tzinfo=UTC)


@freeze_time("2026-11-22 14:03:30")
def test_job_due_before_the_horizon_needs_direct_dispatch():
    now = utcnow()
    # The scan at 14:03:00 covered jobs due before 14:05:00; one created now for 14:04:59
    # would otherwise wait for the 14:04:00 scan, fine, but one for 14:03:33 would be late.
    assert needs_direct_dispatch(now + timedelta(seconds=3), now, 60)
    assert needs_direct_dispatch(datetime(2026, 11, 22, 14, 4, 59, tzinfo=UTC), now, 60)
    assert not needs_direct_dispatch(datetime(2026, 11, 22, 14, 5, tzinfo=UTC), now, 60)


@freeze_time("2026-11-22 14:03:30")
def test_overdue_job_needs_direct_dispatch():
    now = utcnow()
    assert needs_direct_dispatch(now - timedelta(hours=1), now, 60)


def test_next_wake_is_the_sooner_of_boundary_and_sweep():
    now = datetime(2026, 11, 22, 14, 3, 58, tzinfo=UTC)
    assert next_wake(now, 60, 5, now) == datetime(2026, 11, 22, 14, 4, tzinfo=UTC)
    now = datetime(2026, 11, 22, 14, 3, 10, tzinfo=UTC)
    assert next_wake(now, 60, 5, now) == now + timedelta(seconds=5)
