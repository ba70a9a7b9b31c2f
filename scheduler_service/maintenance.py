"""The scanner's maintenance thread: deletes what outlived its retention — finished jobs with
their history and ended workflows with their tasks (CHRONOQ_RETENTION_DAYS), audit records
(CHRONOQ_AUDIT_RETENTION_DAYS) and job state changes (CHRONOQ_EVENTS_RETENTION_HOURS) — in
small batches, each its own short transaction, so neither the scans nor the API wait on it.
Any number of scanners may run it at once: batches skip rows another one holds."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from common.core import store, workflows
from common.core.events import prune_events
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

#: How often a pass runs.
EVERY = timedelta(hours=1)
#: Rows per transaction: short enough that a delete never holds locks for long.
BATCH = 1000
#: Pause between batches, so a big backlog is worked off without hogging the database.
PAUSE = 0.05
#: Seconds between progress lines of a long pass.
PROGRESS_EVERY = 10.0


@dataclass
class Pruned:
    jobs: int = 0
    workflows: int = 0
    audit: int = 0
    events: int = 0


class Maintenance:
    """Retention passes, on a thread of their own (:meth:`start`) or one at a time (:meth:`run_once`)."""

    def __init__(self, settings: Settings, stop: threading.Event, clock: Callable[[], datetime],
                 *, batch: int = BATCH, pause: float = PAUSE) -> None:
        self.settings = settings
        self.stop = stop
        self.clock = clock
        self.batch = batch
        self.pause = pause
        self.thread: threading.Thread | None = None

    def run_once(self, now: datetime) -> Pruned:
        """One pass: everything past its retention at ``now``, batch after batch, until none is
        left or the service stops."""
        result = Pruned()
        started = last_report = time.monotonic()
        jobs_before = now - timedelta(days=self.settings.retention_days)
        audit_before = now - timedelta(days=self.settings.audit_retention_days)
        events_before = now - timedelta(hours=self.settings.events_retention_hours)
        # A workflow is deleted with its tasks (up to CHRONOQ_WORKFLOW_MAX_TASKS each): fewer per batch.
        workflow_batch = max(1, self.batch // 20)
        for what, prune, before, batch in (("jobs", store.prune_finished, jobs_before, self.batch),
                                           ("workflows", workflows.prune_finished, jobs_before, workflow_batch),
                                           ("audit", store.prune_audit, audit_before, self.batch),
                                           ("events", prune_events, events_before, self.batch)):
            while not self.stop.is_set():
                deleted = self._batch(prune, before, batch)
                setattr(result, what, getattr(result, what) + deleted)
                if deleted < batch:
                    break
                if time.monotonic() - last_report >= PROGRESS_EVERY:
                    last_report = time.monotonic()
                    elapsed = last_report - started
                    log.info("retention: %d finished jobs, %d audit records and %d job events deleted so far "
                             "(%.0f/s)", result.jobs, result.audit, result.events,
                             (result.jobs + result.audit + result.events) / elapsed)
                self.stop.wait(self.pause)
        if result.jobs or result.workflows or result.audit or result.events:
            log.info("retention: deleted %d jobs and %d workflows finished before %s, %d audit records before %s "
                     "and %d job events before %s in %.1fs", result.jobs, result.workflows,
                     jobs_before.isoformat(timespec="seconds"),
                     result.audit, audit_before.isoformat(timespec="seconds"), result.events,
                     events_before.isoformat(timespec="seconds"), time.monotonic() - started)
        return result

    def _batch(self, prune: Callable[..., int], before: datetime, limit: int) -> int:
        with session_scope(self.settings) as session:
            return prune(session, before=before, limit=limit)

    def start(self) -> "Maintenance":
        self.thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.run_once(self.clock())
            except DatabaseUnavailable as exc:
                log.warning("retention pass failed (tried again in an hour): %s", exc)
            except Exception:  # noqa: BLE001 - maintenance must never take the scanner down
                log.exception("retention pass failed (tried again in an hour)")
            self.stop.wait(EVERY.total_seconds())

    def join(self, timeout: float = 10.0) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

