"""The one place chronoq reads the wall clock. Logic takes ``now`` as an argument; the code that
reads the clock imports this module and calls ``clock.utcnow()`` at the moment it needs the time
(never ``from common.infra.clock import utcnow``, which would keep a reference of its own). So a
test sets the time for every call site at once with
``monkeypatch.setattr(common.infra.clock, "utcnow", fake)`` (or freezegun)."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def ensure_aware(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive value is taken to be UTC (SQLite drops the offset)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 with an explicit UTC offset, or None: milliseconds, or microseconds when the
    value has them (truncating them would make a job look due, and fire, early)."""
    if value is None:
        return None
    value = ensure_aware(value)
    return value.isoformat(timespec="milliseconds" if value.microsecond % 1000 == 0 else "microseconds")
