"""The Executor. One thread polls the jobs topic and puts each dispatch into APScheduler
(:class:`~executor_service.timer.Timer`, on an asyncio loop of its own) with a date trigger at
its ``execute_at``, and into the claim-ahead queue. Offsets are committed once a batch is in
the scheduler; a dispatch lost with this process is re-dispatched by the scanner when its
lease runs out.

At the fire instant the loop only runs the job: the start claim was taken ahead in a batch
and read what to run from the job's row (the payload revealed and loaded, the handler resolved,
the tenant's signing secrets at hand, all on the claimer's database thread), the HTTP
connection is pooled, and the outcome goes to the reporter thread, which writes and publishes
in group commits."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from typing import Any, Callable

from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.triggers.date import DateTrigger

from common.core import store
from common.core.messages import DispatchMessage, decode_dispatch
from common.core.secrets import Keyring
from common.infra import clock
from common.infra.config import Settings
from common.infra.consumer import ConsumerLoop
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable
from common.infra.health import HealthCheck, consumers_check
from common.infra.kafka import Producer
from common.infra.logs import job_fields

from executor_service import metrics
from executor_service.claims import Claims
from executor_service.outcomes import Outcomes
from executor_service.runner import FIRE, Run, Runner, prepare, received
from executor_service.stats import Counters
from executor_service.tenants import Tenants
from executor_service.timer import Timer, job_id

log = logging.getLogger(__name__)

STATUS_EVERY = 60.0     # seconds between status lines when nothing changes
STATUS_MIN_GAP = 5.0    # at most one status line this often, however busy
#: The interpreter hands the GIL over this often (default 5 ms): the polling and reporting
#: threads then delay the loop's fires by at most this much.
SWITCH_INTERVAL = 0.0005


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the fire path. Waiting attempts are many long-lived
    objects (a few hundred thousand at a high rate); each full collection would walk all of them
    and stop the loop for tens of milliseconds. After a batch is scheduled, the young garbage is
    collected (cheap: young objects only) and everything still alive is frozen, out of the
    collector's sight; nothing here is cyclic, so attempts are still freed when they end."""
    gc.collect(1)
    gc.freeze()


def _apscheduler_id(message: DispatchMessage) -> str:
    """The attempt's id in the scheduler: of attempts due at the same instant, those of higher
    priority fire first (:func:`~executor_service.timer.job_id`)."""
    return job_id(f"{message.job_id}:{message.token}:{message.attempt}", message.priority)


class Executor:
    """Consume ``settings.topic_jobs`` and run its jobs on time until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.counters = Counters()
        client_id = f"chronoq-executor-{settings.resolved_executor_id}"
        self.producer = Producer(settings, client_id=client_id)
        self.outcomes = Outcomes(settings, producer=self.producer)
        self.loop = asyncio.new_event_loop()
        self.database = ThreadPoolExecutor(2, thread_name_prefix="executor-db")
        # Once per executor: it opens every secret revealed here.
        self.keyring = Keyring.from_settings(settings)
        self.tenants = Tenants(self.keyring)
        self.claims: Claims[Run] = Claims(
            settings, settings.resolved_executor_id, self.database, self.tenants,
            functools.partial(prepare, settings=settings, keyring=self.keyring, tenants=self.tenants),
        )
        self.scheduler = Timer(timezone=timezone.utc, event_loop=self.loop)
        self.runner = Runner(settings, self.outcomes, self.claims, self.counters, self.schedule)
        self.consumer = ConsumerLoop(
            settings,
            topic=settings.topic_jobs,
            group_id=settings.executor_group,
            decode=decode_dispatch,
            handle=self._handle,
            stop=stop,
            producer=self.producer,
            client_id=client_id,
        )
        # Taken while adding a job and while closing, so that no job slips into the scheduler
        # after the hand-back collected what was left.
        self._closing_lock = threading.Lock()
        self._closing = False
        #: Retries that came after the stop began; handed back with the rest.
        self._refused: list[DispatchMessage] = []
        metrics.track(self)
        # Per-job INFO lines from APScheduler ("Running job …") would contend for the log
        # handler's lock at every fire; chronoq logs what matters itself.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    @property
    def ready(self) -> threading.Event:
        """Set once this member was assigned partitions of the jobs topic."""
        return self.consumer.assigned

    def run(self) -> None:
        """Block until ``stop`` is set, then stop cleanly (see :meth:`_shutdown`)."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        started = threading.Event()
        looper = threading.Thread(target=self._run_loop, args=(started,), name="executor-loop", daemon=True)
        looper.start()
        started.wait()
        poller = threading.Thread(target=self.consumer.run, name="executor-poll", daemon=True)
        poller.start()
        log.info(
            "executor %s consuming %s (group %s); claims %.2fs ahead",
            self.settings.resolved_executor_id, self.settings.topic_jobs, self.settings.executor_group,
            self.settings.claim_ahead_seconds,
        )
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(beating,), name="executor-heartbeat", daemon=True)
        heart.start()
        try:
            self._report_until_stopped()
        finally:
            self.stop.set()
            poller.join()
            try:
                self._shutdown()  # running jobs finish in here, so the heartbeat goes on until after
            finally:
                beating.set()
                heart.join()
                self.loop.call_soon_threadsafe(self.loop.stop)
                looper.join(10)

    def _run_loop(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.scheduler.start()
            self.loop.create_task(self.claims.run(), name="claims")
            started.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.http.close())
        self.loop.close()

    def schedule(self, message: DispatchMessage) -> bool:
        """Add one attempt to the scheduler and the claim queue (from any thread). A duplicate
        delivery (same job, token and attempt) is ignored. False when the executor is closing
        and did not take it."""
        return self.schedule_many([message])

    def schedule_many(self, messages: list[DispatchMessage]) -> bool:
        """:meth:`schedule` for a batch. Only what the claim needs is kept of each message
        (:func:`~executor_service.runner.received`): the run comes from the job's row."""
        messages = [received(m) for m in messages]
        with self._closing_lock:
            if self._closing:
                self._refused.extend(messages)
                return False
            fresh = []
            for message in messages:
                try:
                    self.scheduler.add_job(
                        FIRE,
                        DateTrigger(run_date=message.execute_at, timezone=timezone.utc),
                        args=(self.runner, message),
                        id=_apscheduler_id(message),
                        name="fire",  # one shared string: the default is a new one per job
                        misfire_grace_time=None,  # always run late jobs; chronoq applies its own grace
                        coalesce=False,
                        max_instances=1,
                    )
                    fresh.append(message)
                except ConflictingIdError:
                    log.debug("dispatch %s is already scheduled here; duplicate delivery ignored",
                              _apscheduler_id(message))
            if fresh:
                self.loop.call_soon_threadsafe(self._queue_claims, fresh)
        self.counters.add("scheduled", len(fresh))
        return True

    def _queue_claims(self, messages: list[DispatchMessage]) -> None:
        for message in messages:
            self.claims.add(message)

    def _handle(self, messages: list[DispatchMessage]) -> bool:
        """ConsumerLoop's handler: put each dispatch into the scheduler (idempotent, so a batch
        handled again after one of its records failed schedules nothing twice)."""
        taken = self.schedule_many(messages)
        _settle_garbage_collector()  # here, on the polling thread: never on the loop
        return taken

    @property
    def health(self) -> HealthCheck:
        return consumers_check(self.consumer.health)

    def _heartbeat(self, done: threading.Event) -> None:
        """Every third of a lease, extend the leases of the attempts running here, so that only
        an executor that went silent (killed, hung, cut off) has its attempts re-dispatched."""
        interval = self.settings.lease_seconds / 3
        while not done.wait(interval):
            self.outcomes.write_pending()
            running = list(self.runner.running.values())
            if not running:
                continue
            try:
                with session_scope(self.settings) as session:
                    store.extend_leases(session, running, now=clock.utcnow(), lease=self.settings.lease_seconds)
            except DatabaseUnavailable as exc:
                log.warning("could not extend the leases of %d running jobs: %s", len(running), exc)

    def _report_until_stopped(self) -> None:
        last = self.counters.snapshot()
        last_at = time.monotonic()
        while not self.stop.wait(1.0):
            metrics.observe_fires(self.runner.fires)
            now = self.counters.snapshot()
            elapsed = time.monotonic() - last_at
            if (now != last and elapsed >= STATUS_MIN_GAP) or elapsed >= STATUS_EVERY:
                log.info(
                    "executor: %s; %d waiting, %d running; %d claim batches, %d report batches",
                    now.line(), len(self.claims), self.runner.active, self.claims.batches, self.outcomes.batches,
                )
                last, last_at = now, time.monotonic()

    def _shutdown(self) -> None:
        """Hand back every attempt not yet claimed, let the claimed and running ones finish,
        report them, close the producer."""
        with self._closing_lock:
            self._closing = True
        unclaimed = asyncio.run_coroutine_threadsafe(self._release_unclaimed(), self.loop).result()
        before = self.counters.snapshot()
        self._wait_for_running()
        handed_back = self._hand_back(unclaimed + self._refused)
        self._on_loop(self.outcomes.hand_over)
        finished = self.counters.snapshot()
        done = sum(getattr(finished, n) - getattr(before, n) for n in ("succeeded", "failed", "retried"))
        if not self.outcomes.drain(timeout=30):
            log.warning("executor stopping with attempt ends still unreported; their leases recover them")
        self.outcomes.close()
        self.database.shutdown(wait=True)
        self.producer.close()
        metrics.observe_fires(self.runner.fires)
        log.info("executor stopped: handed back %d jobs, finished %d; %s", handed_back, done, finished.line())

    def _on_loop(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` on the event loop and wait for it (from another thread)."""
        async def run() -> Any:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    async def _release_unclaimed(self) -> list[DispatchMessage]:
        """On the loop: stop claiming, and take the attempts not claimed out of the scheduler."""
        unclaimed = self.claims.take_unclaimed()
        for message in unclaimed:
            try:
                self.scheduler.remove_job(_apscheduler_id(message))
            except JobLookupError:
                pass  # firing now: its claim answers SKIPPED, so it does not start
        return unclaimed

    def _wait_for_running(self) -> None:
        """Until every claimed attempt has fired and ended (each within its own timeout)."""
        last_log = time.monotonic()
        while self.scheduler.get_jobs() or self.runner.active:
            if time.monotonic() - last_log >= 5:
                log.info("executor stopping: waiting for %d running jobs", self.runner.active)
                last_log = time.monotonic()
            time.sleep(0.05)
        asyncio.run_coroutine_threadsafe(self._stop_scheduler(), self.loop).result()

    async def _stop_scheduler(self) -> None:
        self.scheduler.shutdown(wait=False)

    def _hand_back(self, messages: list[DispatchMessage]) -> int:
        """SCHEDULED again for dispatches and retries that did not fire, so the scanner
        re-dispatches them now rather than after their lease."""
        if not messages:
            return 0
        try:
            with session_scope(self.settings) as session:
                handed = store.unclaim_all(session, messages, now=clock.utcnow())
        except DatabaseUnavailable as exc:
            log.warning(
                "could not hand back %d jobs (%s); the scanner re-dispatches them when their "
                "leases run out", len(messages), exc,
            )
            return 0
        for message in messages:
            if message.job_id not in handed:
                log.info(
                    "job %s attempt %d not handed back (cancelled, finished or superseded meanwhile)",
                    message.job_id, message.attempt, extra=job_fields(message.job_id, message.attempt, message.token),
                )
        return len(handed)
