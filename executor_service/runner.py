"""One fire of one dispatched attempt, on the executor's event loop: wait for its start claim
(taken ahead, :mod:`executor_service.claims`), fire on the dot, run the handler, and hand the
outcome to the reporter (:mod:`executor_service.outcomes`) without waiting for it.

What runs is what the job's row says, read by the start claim (:func:`prepare`), never what
the message says: a forged or altered dispatch can at most cause a claim that fails."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from datetime import datetime
from typing import Any, Callable

from marshmallow import ValidationError

from common.core.backoff import after_failure
from common.core.jobtypes import load_payload
from common.core.messages import DispatchMessage, UpdateMessage
from common.core.secrets import Keyring, SecretError, reveal, secret_names
from common.core.states import JobStatus
from common.core.store import AttemptKey, ClaimedRow, attempt_key
from common.infra import clock, tracing
from common.infra.config import Settings
from common.infra.deadletter import DeadLetter
from common.infra.errors import JobTypeError
from common.infra.logs import job_fields

from executor_service.claims import Claim, Claims, missed
from executor_service.context import HandlerContext, PermanentFailure
from executor_service.deadline import Threads, call_handler
from executor_service.handlers import NATIVE_TIMEOUT, Handler, resolve
from executor_service.handlers.http import Pool
from executor_service.metrics import new_fires
from executor_service.outcomes import Outcomes, safe_output, short_error
from executor_service.stats import Counters
from executor_service.tenants import SigningUnavailable, Tenants

log = logging.getLogger(__name__)

#: Schedules an attempt (a retry); False when the executor is stopping and did not take it.
Schedule = Callable[[DispatchMessage], bool]


#: The payload a waiting dispatch keeps: none (shared, never changed).
_NO_PAYLOAD: dict[str, Any] = {}


def received(message: DispatchMessage) -> DispatchMessage:
    """What is kept of a dispatch while it waits for its claim: its payload only informs (it is
    redacted, and the run uses the row's), so it is dropped; the type and tenant names are
    interned. An attempt waits in memory for up to two windows, many thousands at once."""
    return dataclasses.replace(
        message, payload=_NO_PAYLOAD, type=sys.intern(message.type), tenant=sys.intern(message.tenant),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """A claimed attempt as its row says to run it: the payload with its secrets revealed and
    its defaults filled in, the handler resolved, the tenant's signing secrets; or ``problem``
    says why it cannot run (it then fails at its time, as any run of it would)."""

    type: str
    tenant: str
    payload: dict[str, Any]
    timeout_seconds: float
    max_retries: int
    handler: Handler | None = None
    signing_secrets: tuple[str, ...] = ()
    problem: Exception | None = None
    secret_names: frozenset[str] = frozenset()
    #: Attempts of the job's earlier runs (reruns): its retries are counted from here.
    attempt_base: int = 0
    #: A workflow's task: its end is reported at once (it releases the tasks after it).
    in_workflow: bool = False


def _signing_secrets(tenants: Tenants, row: ClaimedRow) -> tuple[str, ...]:
    """The secrets the run signs with. Only ``http`` deliveries are signed by chronoq, so only
    they fail when the tenant's secret cannot be opened (a wrong CHRONOQ_SECRET_KEY); other
    types run, their handlers given none."""
    if row.type == "http":
        return tenants.secrets(row.tenant)
    try:
        return tenants.secrets(row.tenant)
    except (PermanentFailure, SigningUnavailable):
        return ()


def prepare(
    message: DispatchMessage, row: ClaimedRow, *, settings: Settings, keyring: Keyring | None, tenants: Tenants,
) -> Run:
    """The run of ``message``'s claimed attempt from its ``row``: made by the claimer on its
    database thread as the claim's answer arrives, so the fire only runs it. Never raises."""
    if row.type != message.type:
        log.warning(
            "job %s: dispatch %s names type %r, the job is %r; running the job's",
            message.job_id, message.token, message.type, row.type,
            extra=job_fields(message.job_id, message.attempt, message.token),
        )
    try:
        handler = resolve(row.type, settings)
        payload = load_payload(row.type, reveal(row.type, row.payload, keyring))
        signing = _signing_secrets(tenants, row)
    except ValidationError as exc:
        problem: Exception = PermanentFailure(f"invalid payload: {exc.messages}")
    except SecretError as exc:
        problem = PermanentFailure(f"secret cannot be revealed: {exc}")
    except (JobTypeError, PermanentFailure, SigningUnavailable) as exc:
        problem = exc
    except Exception as exc:  # noqa: BLE001 - a bug here must fail one attempt, not the claimer
        log.exception("job %s: cannot prepare attempt %d", message.job_id, message.attempt,
                      extra=job_fields(message.job_id, message.attempt, message.token))
        problem = PermanentFailure(f"cannot prepare the run: {type(exc).__name__}: {exc}")
    else:
        return Run(row.type, row.tenant, payload, row.timeout_seconds, row.max_retries, handler, signing,
                   secret_names=secret_names(row.type, row.payload), attempt_base=row.attempt_base,
                   in_workflow=row.in_workflow)
    return Run(row.type, row.tenant, {}, row.timeout_seconds, row.max_retries, problem=problem,
               attempt_base=row.attempt_base, in_workflow=row.in_workflow)


async def fire(runner: "Runner", message: DispatchMessage) -> None:
    """APScheduler's job function, referenced by name (:data:`FIRE`): a bound method would
    cost every waiting attempt its own reference string."""
    await runner.fire(message)


#: How the scheduler names :func:`fire`; one string shared by every waiting attempt.
FIRE = "executor_service.runner:fire"


class Runner:
    """Runs fired attempts on the executor's event loop."""

    def __init__(
        self, settings: Settings, outcomes: Outcomes, claims: Claims[Run], counters: Counters, schedule: Schedule,
    ) -> None:
        self.settings = settings
        self.outcomes = outcomes
        self.claims = claims
        self.counters = counters
        self.schedule = schedule
        self.executor_id = settings.resolved_executor_id
        self.http = Pool(settings.http_pool_size)
        self.threads: Threads | None = None  # made on the loop (an asyncio semaphore)
        #: Attempts started and not yet reported; the executor's heartbeat extends their leases.
        self.running: dict[AttemptKey, DispatchMessage] = {}
        #: Attempts between their claim and their end (what a stop waits for).
        self.active = 0
        #: (type, handler start, due) of each started attempt, for the lateness histogram
        #: (executor_service.metrics): a fire only appends here.
        self.fires = new_fires()

    async def fire(self, message: DispatchMessage) -> None:
        """APScheduler's job function. Never raises: an unexpected error is logged, and the
        job is recovered by the scanner once its lease runs out."""
        try:
            await self._fire(message)
        except Exception:
            log.exception(
                "job %s attempt %d: unexpected executor error; the scanner re-dispatches it when "
                "its lease runs out", message.job_id, message.attempt,
                extra=job_fields(message.job_id, message.attempt, message.token),
            )

    async def _fire(self, message: DispatchMessage) -> None:
        self.counters.add("fired")
        claim, run = await self.claims.result(message)
        if claim is not Claim.CLAIMED or run is None:
            self._not_started(message, claim)
            return
        self.active += 1
        key = attempt_key(message)
        self.running[key] = message
        try:
            await sleep_until(message.execute_at)
            now = clock.utcnow()
            error = missed(message, now)
            if error is not None:
                # Claimed in time but fired past its grace (the executor stalled): it ends here.
                self._report_missed(message, now, error)
                return
            if tracing.active():
                await self._run_traced(message, run, now)
            else:
                await self._run(message, run, now)
        finally:
            self.running.pop(key, None)
            self.active -= 1

    async def _run(self, message: DispatchMessage, run: Run, now: datetime) -> Exception | None:
        """Report RUNNING, run the handler, report the end; returns the handler's error."""
        self.outcomes.running(self._update(message, JobStatus.RUNNING, at=now, started_at=now))
        try:
            output = await self._execute(message, run)
        except Exception as exc:
            self._failed(message, run, now, exc)
            return exc
        else:
            self._succeeded(message, now, output, urgent=run.in_workflow)
            return None
        finally:
            # After the handler, not before it: the histogram is fed off the loop.
            self.fires.append((run.type, now, message.execute_at))

    async def _run_traced(self, message: DispatchMessage, run: Run, now: datetime) -> None:
        """:meth:`_run` in an "execute <type>" span, a child of the dispatch's (tracing on):
        the handler gets the span's context (``HandlerContext.trace_context``, which ``http``
        sends), and so do the attempt's updates and its retry."""
        attributes = {**tracing.attempt_attributes(message),
                      "chronoq.lateness_seconds": (now - message.execute_at).total_seconds()}
        with tracing.span(f"execute {run.type}", parent=message.trace, kind="consumer", attributes=attributes) as span:
            error = await self._run(dataclasses.replace(message, trace=tracing.inject()), run, now)
            if error is not None:
                tracing.failed(span, short_error(error))

    def _not_started(self, message: DispatchMessage, claim: Claim) -> None:
        if claim is Claim.MISSED:
            self.counters.add("failed")
            now = clock.utcnow()
            error = self.claims.missed_error(message)  # word for word what the database says
            log.warning("job %s FAILED without starting: %s", message.job_id, error,
                        extra=job_fields(message.job_id, message.attempt, message.token))
            # The claim already wrote FAILED; the update tells the topic's readers.
            self.outcomes.final(self._update(message, JobStatus.FAILED, at=now, finished_at=now, error=error))
            return
        self.counters.add("skipped")
        if claim is Claim.SKIPPED:
            log.info(
                "job %s dispatch %s attempt %d not started: cancelled, finished, superseded, or "
                "not of the tenant its dispatch names",
                message.job_id, message.token, message.attempt,
                extra=job_fields(message.job_id, message.attempt, message.token),
            )

    async def _execute(self, message: DispatchMessage, run: Run) -> Any:
        if run.problem is not None:
            raise run.problem
        assert run.handler is not None  # a run without a problem has its handler
        if self.threads is None:
            self.threads = Threads(self.settings.executor_workers)
        context = HandlerContext(
            job_id=message.job_id,
            name=message.name,
            attempt=message.attempt,
            max_retries=run.max_retries,
            idempotency_key=message.idempotency_key,
            deadline=time.monotonic() + run.timeout_seconds,
            timeout_seconds=run.timeout_seconds,
            settings=self.settings,
            http=self.http,
            tenant=run.tenant,
            dispatch_token=message.token,
            signing_secrets=run.signing_secrets,
            secret_names=run.secret_names,
            trace_context=message.trace,
        )
        return await call_handler(
            run.handler, run.payload, context, self.threads, native=run.type in NATIVE_TIMEOUT,
            # Waiting for a handler thread: the earliest due first, then the highest priority.
            order=(message.execute_at, -message.priority),
        )

    def _succeeded(self, message: DispatchMessage, started_at: datetime, output: Any, *, urgent: bool = False) -> None:
        finished = clock.utcnow()
        self.counters.add("succeeded")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "job %s attempt %d succeeded in %.3fs",
                message.job_id, message.attempt, (finished - started_at).total_seconds(),
                extra=job_fields(message.job_id, message.attempt, message.token),
            )
        self.outcomes.final(self._update(
            message, JobStatus.SUCCESS, at=finished, started_at=started_at, finished_at=finished,
            output=safe_output(output),
        ), urgent=urgent)

    def _failed(self, message: DispatchMessage, run: Run, started_at: datetime, exc: Exception) -> None:
        finished = clock.utcnow()
        error = short_error(exc)
        decision = after_failure(
            message.attempt - run.attempt_base, run.max_retries,
            permanent=isinstance(exc, (PermanentFailure, JobTypeError)),
            failed_at=finished,
            base=self.settings.retry_backoff_seconds,
            cap=self.settings.retry_backoff_max_seconds,
            jitter=self.settings.retry_jitter,
        )
        if decision.retry_at is not None:
            next_at = decision.retry_at
            self.counters.add("retried")
            log.warning(
                "job %s attempt %d failed (%s); retry %d in %.1fs",
                message.job_id, message.attempt, error, message.attempt + 1, (next_at - finished).total_seconds(),
                extra=job_fields(message.job_id, message.attempt, message.token),
            )
            self.outcomes.final(self._update(
                message, JobStatus.RETRYING, at=finished, started_at=started_at, finished_at=finished,
                next_attempt_at=next_at, error=error,
            ))
            # Same dispatch token: the start claim's CAS on the attempt count keeps the retry single.
            retry = dataclasses.replace(
                message,
                max_retries=run.max_retries,
                timeout_seconds=run.timeout_seconds,
                attempt=message.attempt + 1,
                key_attempt=(message.key_attempt or message.attempt) + 1,
                execute_at=next_at,
            )
            if not self.schedule(retry):
                log.info(
                    "executor stopping: retry %d of job %s left to the scanner (after its lease)",
                    retry.attempt, message.job_id, extra=job_fields(message.job_id, retry.attempt, message.token),
                )
            return
        self.counters.add("failed")
        log.warning("job %s FAILED on attempt %d (%s): %s", message.job_id, message.attempt, decision.reason, error,
                    extra=job_fields(message.job_id, message.attempt, message.token))
        self.outcomes.final(
            self._update(message, JobStatus.FAILED, at=finished, started_at=started_at, finished_at=finished, error=error),
            dead_letter=DeadLetter(
                reason=decision.reason or "failed",
                job_id=str(message.job_id),
                extra={
                    "name": message.name, "type": run.type, "tenant": run.tenant, "token": message.token,
                    "attempt": message.attempt, "max_retries": run.max_retries, "error": error,
                },
            ),
            urgent=run.in_workflow,
        )

    def _report_missed(self, message: DispatchMessage, now: datetime, error: str) -> None:
        self.counters.add("failed")
        log.warning("job %s FAILED without running: %s", message.job_id, error,
                    extra=job_fields(message.job_id, message.attempt, message.token))
        self.outcomes.final(self._update(message, JobStatus.FAILED, at=now, finished_at=now, error=error))

    def _update(self, message: DispatchMessage, status: JobStatus, *, at: datetime, **fields: Any) -> UpdateMessage:
        return UpdateMessage(
            job_id=message.job_id, token=message.token, status=status.value, attempt=message.attempt,
            at=at, executor=self.executor_id, trace=message.trace, **fields,
        )


async def sleep_until(moment: datetime) -> None:
    """Sleep until ``moment`` has passed on the wall clock (timers can wake a hair early)."""
    while True:
        left = (moment - clock.utcnow()).total_seconds()
        if left <= 0:
            return
        await asyncio.sleep(left)
