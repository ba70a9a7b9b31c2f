"""Window arithmetic for dispatch, as pure functions of ``now`` (tested under freezegun).

Time is cut into windows of ``interval`` seconds aligned on the epoch (with 60 s: every minute
boundary). At each boundary the scanner dispatches everything due before the end of the *next*
window, so a job is on an executor between one and two windows before it is due."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def window_start(now: datetime, interval: float) -> datetime:
    """The start of the window that contains ``now``."""
    elapsed = (now - _EPOCH).total_seconds()
    return _EPOCH + timedelta(seconds=math.floor(elapsed / interval) * interval)


def next_boundary(now: datetime, interval: float) -> datetime:
    """The next window boundary strictly after ``now``: when the scanner wakes next."""
    return window_start(now, interval) + timedelta(seconds=interval)


def dispatch_horizon(now: datetime, interval: float) -> datetime:
    """The end of the next window: a scan at ``now`` dispatches every job due before this
    (overdue ones included)."""
    return window_start(now, interval) + timedelta(seconds=2 * interval)


def needs_direct_dispatch(execute_at: datetime, now: datetime, interval: float) -> bool:
    """Whether a job created at ``now`` may already have been passed over by the scanner.

    The scan at the start of the current window covered jobs due before
    ``dispatch_horizon(now)``; a job created after that scan and due before the horizon would
    otherwise wait for the next scan, possibly past its time. The API dispatches such a job
    itself."""
    return execute_at < dispatch_horizon(now, interval)
