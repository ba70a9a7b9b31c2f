"""APScheduler's asyncio scheduler as the executor's timer, with wakeups that coalesce, and
attempts due at the same instant fired in priority order.

Stock ``AsyncIOScheduler.wakeup`` posts one callback to the loop per ``add_job``, and each
runs a full pass over the job store; a consumer batch of 500 far-future attempts would cost
the loop 500 passes while it should be firing jobs on the dot. Here the adds from the polling
thread share one pending wakeup, and the timer's own callback runs the pass directly.

**Order at one instant.** APScheduler's memory job store keeps its jobs sorted by
(next run time, job id), and a pass starts the due ones in that order: one asyncio task each,
which the loop runs first come, first served. So of attempts due at the same instant the one
with the smallest id fires first. :func:`job_id` makes that the one of highest priority: it
puts the priority in front of the attempt's name, in a form whose string order is the
priority order, highest first. Nothing is added at the fire: the order is kept by the store's
insertion, which happens when the dispatch arrives."""

from __future__ import annotations

import threading

from apscheduler.schedulers.asyncio import AsyncIOScheduler

#: Priorities are 32-bit integers (the ``jobs.priority`` column); a value beyond is clamped.
_LOWEST = -(2**31)
_HIGHEST = 2**31 - 1


def job_id(name: str, priority: int) -> str:
    """The scheduler's id of the attempt ``name`` (which starts with a hex digit, as a UUID
    does) of the given ``priority``. For one due time, ids sort highest priority first:

    - priority 0 (the default) is ``name`` itself, so it costs a waiting attempt nothing;
    - a positive one is ``+`` (before every hex digit) and ``2**31 - priority`` in ten digits;
    - a negative one is ``~`` (after every hex digit) and ``-priority`` in ten digits.

    Equal priorities keep the order of their names (random: job ids are UUIDs)."""
    if priority == 0:
        return name
    priority = min(max(priority, _LOWEST), _HIGHEST)
    if priority > 0:
        return f"+{2**31 - priority:010d}:{name}"
    return f"~{-priority:010d}:{name}"


class Timer(AsyncIOScheduler):
    """An ``AsyncIOScheduler`` whose wakeups from other threads are coalesced. Give its jobs
    ids made by :func:`job_id` to fire those due at the same instant by priority."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._wakeup_lock = threading.Lock()
        self._wakeup_queued = False

    def wakeup(self) -> None:  # type: ignore[override]
        with self._wakeup_lock:
            if self._wakeup_queued:
                return
            self._wakeup_queued = True
        self._eventloop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        # Cleared before the pass, so a job added during it queues a wakeup of its own.
        with self._wakeup_lock:
            self._wakeup_queued = False
        self._stop_timer()
        self._start_timer(self._process_jobs())

    def _start_timer(self, wait_seconds: float | None) -> None:
        self._stop_timer()
        if wait_seconds is not None:
            self._timeout = self._eventloop.call_later(wait_seconds, self._wake)
