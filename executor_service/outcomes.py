"""Reporting attempts, off the fire path: group commits on a thread of their own.

The event loop hands each report over without waiting. The reporter thread takes everything
queued at once and, per batch: writes the attempt ends through to the database in one
transaction, then publishes every update without a flush per message and waits for the
acknowledgements together. While one batch is written the next one gathers, so the batches
grow with the load and add no delay when idle.

An attempt's end (SUCCESS, FAILED, RETRYING) is written to the database *and* published: the
result writer applies the same update idempotently, so the outcome survives the loss of either
path. Ends the database missed are kept and written by the heartbeat once it is back. RUNNING
is published fire-and-forget: the start claim already wrote it to the database."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from common.core import store, workflow_release
from common.core.dispatch import dispatch_released
from common.core.messages import UpdateMessage, encode_update
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.deadletter import DeadLetter
from common.infra.errors import DatabaseUnavailable
from common.infra import tracing
from common.infra.kafka import Producer, records
from common.infra.logs import job_fields
from common.infra.retry import PUBLISH, Pacer

from executor_service.metrics import DEAD_LETTERED, PUBLISH_SECONDS, WRITE_SECONDS

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 64 * 1024  # bytes of JSON output kept in an update
ERROR_LIMIT = 4000        # characters of an error message kept
PUBLISH_TRIES = 4


def safe_output(value: Any, limit: int = OUTPUT_LIMIT) -> Any:
    """``value`` as JSON-compatible data no larger than ``limit`` bytes once encoded; a larger
    one becomes ``{"truncated": true, "size": n, "preview": "<first bytes of the JSON>"}``."""
    try:
        encoded = orjson.dumps(value, default=str)
    except (TypeError, orjson.JSONEncodeError):  # circular structures, integers beyond 64 bits
        encoded = orjson.dumps(repr(value))
    if len(encoded) <= limit:
        return orjson.loads(encoded)
    return {"truncated": True, "size": len(encoded), "preview": encoded[: limit // 2].decode(errors="ignore")}


def short_error(exc: BaseException | str) -> str:
    """An error line for the update and the history: type and message, bounded."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LIMIT else text[:ERROR_LIMIT] + "…(truncated)"


@dataclass(frozen=True, slots=True)
class Report:
    """One update to report; ``final`` ends an attempt (database and acknowledged publish)."""

    update: UpdateMessage
    final: bool
    dead_letter: DeadLetter | None = None


#: How long reports gather on the event loop before they go to the reporter thread together.
#: Waking that thread at every fire would take the interpreter from the loop at the very
#: moment the next job is due, and a transaction and a flush per job would cost more than the
#: jobs at a low rate; this bounds them to 20 a second, whatever the rate.
HANDOVER_DELAY = 0.05


class Outcomes:
    """The reporter of one executor: :meth:`running` and :meth:`final` return at once. Called
    on the executor's event loop; reports are handed to the reporter thread in small batches."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self.settings = settings
        self.producer = producer
        self._cond = threading.Condition()
        self._queue: list[Report] = []
        self._busy = False
        self._closed = False
        #: Attempt ends not yet written to the database; the heartbeat writes them when it is back.
        self.pending: list[UpdateMessage] = []
        self._pending_lock = threading.Lock()
        self.batches = 0
        self._gathered: list[Report] = []  # on the loop, not yet handed over
        self._thread = threading.Thread(target=self._run, name="executor-reporter", daemon=True)
        self._thread.start()

    def running(self, update: UpdateMessage) -> None:
        self._gather(Report(update, final=False))

    def final(self, update: UpdateMessage, dead_letter: DeadLetter | None = None, *, urgent: bool = False) -> None:
        """Report an attempt's end; ``urgent`` (a workflow's task, whose end releases the tasks
        after it) hands it over at once instead of after :data:`HANDOVER_DELAY`."""
        self._gather(Report(update, final=True, dead_letter=dead_letter), urgent=urgent)

    def _gather(self, report: Report, urgent: bool = False) -> None:
        if not self._gathered and not urgent:
            asyncio.get_running_loop().call_later(HANDOVER_DELAY, self.hand_over)
        self._gathered.append(report)
        if urgent:
            self.hand_over()

    def hand_over(self) -> None:
        """Give the reports gathered on the loop to the reporter thread (on the loop)."""
        reports, self._gathered = self._gathered, []
        if reports:
            with self._cond:
                self._queue.extend(reports)
                self._cond.notify()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over so far was reported; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Report what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._report(batch)
            except Exception:  # the thread must survive anything; leases recover the jobs
                log.exception("reporting %d updates failed", len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _report(self, batch: list[Report]) -> None:
        ends = [r.update for r in batch if r.final]
        recorded = self._record(ends)
        published = self._publish(batch)
        for report, ok in zip(batch, published):
            if report.final and not (ok or recorded):
                update = report.update
                log.error(
                    "job %s: %s of attempt %d neither recorded nor published; the scanner "
                    "re-dispatches the job once its lease runs out",
                    update.job_id, update.status, update.attempt,
                    extra=job_fields(update.job_id, update.attempt, update.token),
                )
        letters = [r.dead_letter for r in batch if r.dead_letter is not None]
        for letter in letters:
            self.producer.dead_letter(letter)
        DEAD_LETTERED.inc(len(letters))
        self.batches += 1

    def _record(self, ends: list[UpdateMessage]) -> bool:
        if not ends:
            return True
        started = time.perf_counter()
        try:
            with session_scope(self.settings) as session:
                store.end_attempts(session, ends, lease=self.settings.lease_seconds)
                released = workflow_release.released(session)
            WRITE_SECONDS.observe(time.perf_counter() - started)
            # Workflow tasks whose last dependency just ended: due now, so published now.
            dispatch_released(self.settings, self.producer, released)
            return True
        except DatabaseUnavailable as exc:
            log.warning(
                "%d attempt ends not written to the database (%s); the result writer will, and "
                "so will the heartbeat once it is back (first: job %s)", len(ends), exc, ends[0].job_id,
            )
            with self._pending_lock:
                self.pending.extend(ends)
            return False

    def _publish(self, batch: list[Report]) -> list[bool]:
        """Send all, one flush, wait for the acks together; re-send the finals not acked."""
        topic = self.settings.topic_updates
        started = time.perf_counter()
        # With tracing on, each update's record carries its attempt's span in its headers.
        updates = [r.update for r in batch]
        acked = self.producer.send_all(topic, records(updates, encode_update, tracing.headers_of(updates)))
        pacer = Pacer(PUBLISH, logger=log)
        for _ in range(PUBLISH_TRIES - 1):
            again = [i for i, ok in enumerate(acked) if not ok and batch[i].final]
            if not again:
                break
            pacer.failed(f"{len(again)} attempt ends not acknowledged by the broker (first: job {batch[again[0]].update.job_id})")
            again_updates = [updates[i] for i in again]
            retried = self.producer.send_all(
                topic, records(again_updates, encode_update, tracing.headers_of(again_updates))
            )
            for i, ok in zip(again, retried):
                acked[i] = ok
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
        return acked

    def write_pending(self) -> int:
        """Write through the attempt ends the database missed (called by the heartbeat)."""
        with self._pending_lock:
            pending = list(self.pending)
        if not pending:
            return 0
        try:
            with session_scope(self.settings) as session:
                store.apply_updates(session, pending, lease=self.settings.lease_seconds)
                released = workflow_release.released(session)
            dispatch_released(self.settings, self.producer, released)
        except DatabaseUnavailable:
            return 0
        with self._pending_lock:
            self.pending = [u for u in self.pending if u not in pending]
        log.info("wrote %d attempt ends through to the database after it came back", len(pending))
        return len(pending)
