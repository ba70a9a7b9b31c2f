"""APScheduler's asyncio scheduler as the executor's timer, with wakeups that coalesce.

Stock ``AsyncIOScheduler.wakeup`` posts one callback to the loop per ``add_job``, and each
runs a full pass over the job store; a consumer batch of 500 far-future attempts would cost
the loop 500 passes while it should be firing jobs on the dot. Here the adds from the polling
thread share one pending wakeup, and the timer's own callback runs the pass directly."""

from __future__ import annotations

import threading

from apscheduler.schedulers.asyncio import AsyncIOScheduler


class Timer(AsyncIOScheduler):
    """An ``AsyncIOScheduler`` whose wakeups from other threads are coalesced."""

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
