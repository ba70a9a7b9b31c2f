"""One fire of one dispatched attempt: claim it, run it, report it, schedule its retry."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta
from typing import Any, Callable, TypeVar

from marshmallow import ValidationError

from common.core import store
from common.core.backoff import retries_left, retry_delay
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable, JobTypeError
from common.infra.retry import FIRE_PATH, GaveUp, retry
from common.core.jobtypes import load_payload
from common.infra.kafka import Producer
from common.core.messages import DispatchMessage, UpdateMessage
from common.infra.deadletter import DeadLetter
from common.core.states import JobStatus

from executor_service.context import HandlerContext, PermanentFailure
from executor_service.handlers import resolve
from executor_service.stats import Counters
from executor_service.timeouts import run_with_deadline
from executor_service.updates import Updates, safe_output, short_error

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Schedules an attempt in memory; False when the executor is stopping and did not take it.
Schedule = Callable[[DispatchMessage], bool]


class Runner:
    """Runs fired attempts; called on APScheduler's pool threads."""

    def __init__(self, settings: Settings, producer: Producer, counters: Counters, schedule: Schedule) -> None:
        self.settings = settings
        self.producer = producer
        self.updates = Updates(settings, producer)
        self.counters = counters
        self.schedule = schedule
        self.executor_id = settings.resolved_executor_id
        #: Attempts running now; the executor's heartbeat extends their leases.
        self.running: dict[tuple[Any, int, int], DispatchMessage] = {}

    def fire(self, message: DispatchMessage) -> None:
        """APScheduler's job function. Never raises: an unexpected error is logged, and the
        job is recovered by the scanner once its lease runs out."""
        try:
            self._fire(message)
        except Exception:
            log.exception(
                "job %s attempt %d: unexpected executor error; the scanner re-dispatches it when "
                "its lease runs out", message.job_id, message.attempt,
            )

    def _fire(self, message: DispatchMessage) -> None:
        wait_until(message.execute_at)
        now = utcnow()
        self.counters.add("fired")
        late = (now - message.execute_at).total_seconds()
        grace = message.misfire_grace_seconds
        if grace is not None and late > grace:
            self._missed(message, now, late, grace)
            return
        claimed = self._db(message, "start", lambda s: store.claim_start(
            s, message, executor=self.executor_id, now=now, lease=self.settings.lease_seconds,
        ))
        if claimed is None:
            self.counters.add("skipped")
            return
        if not claimed:
            self.counters.add("skipped")
            log.info(
                "job %s dispatch %s attempt %d not started: cancelled, finished or superseded",
                message.job_id, message.token, message.attempt,
            )
            return
        log.debug("job %s attempt %d started %.1f ms after its time", message.job_id, message.attempt, late * 1000)
        self.updates.running(self._update(message, JobStatus.RUNNING, at=now, started_at=now))
        key = (message.job_id, message.token, message.attempt)
        self.running[key] = message
        try:
            output = self._execute(message)
        except Exception as exc:
            self._failed(message, now, exc)
        else:
            self._succeeded(message, now, output)
        finally:
            self.running.pop(key, None)

    def _execute(self, message: DispatchMessage) -> Any:
        deadline = time.monotonic() + message.timeout_seconds
        handler = resolve(message.type, self.settings)
        try:
            payload = load_payload(message.type, message.payload)
        except ValidationError as exc:
            raise PermanentFailure(f"invalid payload: {exc.messages}") from exc
        context = HandlerContext(
            job_id=message.job_id,
            name=message.name,
            attempt=message.attempt,
            max_retries=message.max_retries,
            idempotency_key=message.idempotency_key,
            deadline=deadline,
            timeout_seconds=message.timeout_seconds,
            settings=self.settings,
        )
        return run_with_deadline(lambda: handler(payload, context), context)

    def _succeeded(self, message: DispatchMessage, started_at: datetime, output: Any) -> None:
        finished = utcnow()
        self.counters.add("succeeded")
        log.info(
            "job %s attempt %d succeeded in %.3fs",
            message.job_id, message.attempt, (finished - started_at).total_seconds(),
        )
        self.updates.final(self._update(
            message, JobStatus.SUCCESS, at=finished, started_at=started_at, finished_at=finished,
            output=safe_output(output),
        ))

    def _failed(self, message: DispatchMessage, started_at: datetime, exc: Exception) -> None:
        finished = utcnow()
        error = short_error(exc)
        permanent = isinstance(exc, (PermanentFailure, JobTypeError))
        if not permanent and retries_left(message.attempt, message.max_retries):
            delay = retry_delay(
                message.attempt,
                base=self.settings.retry_backoff_seconds,
                cap=self.settings.retry_backoff_max_seconds,
                jitter=self.settings.retry_jitter,
            )
            next_at = finished + timedelta(seconds=delay)
            self.counters.add("retried")
            log.warning(
                "job %s attempt %d failed (%s); retry %d in %.1fs",
                message.job_id, message.attempt, error, message.attempt + 1, delay,
            )
            self.updates.final(self._update(
                message, JobStatus.RETRYING, at=finished, started_at=started_at, finished_at=finished,
                next_attempt_at=next_at, error=error,
            ))
            # Same dispatch token: claim_start's CAS on the attempt count keeps the retry single.
            retry = dataclasses.replace(
                message,
                attempt=message.attempt + 1,
                key_attempt=(message.key_attempt or message.attempt) + 1,
                execute_at=next_at,
            )
            if not self.schedule(retry):
                handed = self._db(retry, "hand back", lambda s: store.unclaim(s, retry, now=utcnow()))
                log.info(
                    "executor stopping: retry %d of job %s %s", retry.attempt, message.job_id,
                    "handed back to the scanner" if handed else "left to the scanner (after its lease)",
                )
            return
        self.counters.add("failed")
        reason = "permanent failure" if permanent else "retries exhausted"
        log.warning("job %s FAILED on attempt %d (%s): %s", message.job_id, message.attempt, reason, error)
        self.updates.final(self._update(
            message, JobStatus.FAILED, at=finished, started_at=started_at, finished_at=finished, error=error,
        ))
        self.producer.dead_letter(DeadLetter(
            reason=reason,
            job_id=str(message.job_id),
            extra={
                "name": message.name, "type": message.type, "token": message.token,
                "attempt": message.attempt, "max_retries": message.max_retries, "error": error,
            },
        ))

    def _missed(self, message: DispatchMessage, now: datetime, late: float, grace: float) -> None:
        error = f"missed: {late:.1f}s late, grace {grace:g}s"
        failed = self._db(message, "fail", lambda s: store.fail_unstarted(s, message, error=error, now=now))
        if not failed:
            self.counters.add("skipped")
            return
        self.counters.add("failed")
        log.warning("job %s FAILED without starting: %s", message.job_id, error)
        self.updates.final(self._update(message, JobStatus.FAILED, at=now, finished_at=now, error=error))

    def _db(self, message: DispatchMessage, what: str, statement: Callable[[Any], T]) -> T | None:
        """Run ``statement`` in its own committed transaction, retried with backoff while the
        database is unavailable for up to half a lease (the job then still fires, late, when
        the database is back); None once it gave up (the scanner's lease then re-dispatches
        the job)."""
        def run() -> T:
            with session_scope(self.settings) as session:
                return statement(session)

        try:
            return retry(
                run, on=DatabaseUnavailable, backoff=FIRE_PATH, give_up_after=self.settings.lease_seconds / 2,
                what=f"job {message.job_id} attempt {message.attempt}: {what}", logger=log,
            )
        except GaveUp as exc:
            log.warning(
                "%s; the scanner re-dispatches the job when its lease runs out", exc,
            )
            return None

    def _update(self, message: DispatchMessage, status: JobStatus, *, at: datetime, **fields: Any) -> UpdateMessage:
        return UpdateMessage(
            job_id=message.job_id, token=message.token, status=status.value, attempt=message.attempt,
            at=at, executor=self.executor_id, **fields,
        )


def wait_until(moment: datetime) -> None:
    """Sleep until ``moment`` has passed on :func:`utcnow` (APScheduler can wake a hair early)."""
    while True:
        left = (moment - utcnow()).total_seconds()
        if left <= 0:
            return
        time.sleep(left)
