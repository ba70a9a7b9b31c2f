"""The Executor: one thread polls the jobs topic and puts each dispatch into APScheduler with a
date trigger at its ``execute_at``; APScheduler's pool runs it (:mod:`executor_service.runner`).
Offsets are committed once a batch is in the scheduler; a dispatch lost with this process is
re-dispatched by the scanner when its lease runs out."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from common.core import store
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.consumer import ConsumerLoop
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable
from common.infra.health import HealthCheck, consumers_check
from common.infra.kafka import Producer
from common.core.messages import DispatchMessage, decode_dispatch

from executor_service.runner import Runner
from executor_service.stats import Counters

log = logging.getLogger(__name__)

STATUS_EVERY = 60.0     # seconds between status lines when nothing changes
STATUS_MIN_GAP = 5.0    # at most one status line this often, however busy


class Executor:
    """Consume ``settings.topic_jobs`` and run its jobs on time until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.counters = Counters()
        self.producer = Producer(settings, client_id=f"chronoq-executor-{settings.resolved_executor_id}")
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(settings.executor_workers)},
        )
        self.runner = Runner(settings, self.producer, self.counters, self.schedule)
        self.loop = ConsumerLoop(
            settings,
            topic=settings.topic_jobs,
            group_id=settings.executor_group,
            decode=decode_dispatch,
            handle=self._handle,
            stop=stop,
            producer=self.producer,
            client_id=f"chronoq-executor-{settings.resolved_executor_id}",
        )
        # Taken while adding a job and while closing, so that no job slips into the scheduler
        # after the hand-back collected what was left.
        self._closing_lock = threading.Lock()
        self._closing = False

    @property
    def ready(self) -> threading.Event:
        """Set once this member was assigned partitions of the jobs topic."""
        return self.loop.assigned

    def run(self) -> None:
        """Block until ``stop`` is set, then stop cleanly (see :meth:`_shutdown`)."""
        self.scheduler.start()
        poller = threading.Thread(target=self.loop.run, name="executor-poll", daemon=True)
        poller.start()
        log.info(
            "executor %s consuming %s (group %s), %d workers",
            self.settings.resolved_executor_id, self.settings.topic_jobs, self.settings.executor_group,
            self.settings.executor_workers,
        )
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(beating,), name="executor-heartbeat", daemon=True)
        heart.start()
        try:
            self._report_until_stopped()
        finally:
            self.stop.set()
            poller.join()
            self._shutdown()  # running jobs finish in here, so the heartbeat goes on until after
            beating.set()
            heart.join()

    def schedule(self, message: DispatchMessage) -> bool:
        """Add one attempt to the scheduler. A duplicate delivery (same job, token and attempt)
        is ignored. False when the executor is closing and did not take it."""
        job_id = f"{message.job_id}:{message.token}:{message.attempt}"
        with self._closing_lock:
            if self._closing:
                return False
            try:
                self.scheduler.add_job(
                    self.runner.fire,
                    DateTrigger(run_date=message.execute_at, timezone=timezone.utc),
                    args=(message,),
                    id=job_id,
                    name=f"{message.name} ({message.type})",
                    misfire_grace_time=None,  # always run late jobs; chronoq applies its own grace
                    coalesce=False,
                    max_instances=1,
                )
            except ConflictingIdError:
                log.debug("dispatch %s is already scheduled here; duplicate delivery ignored", job_id)
                return True
        self.counters.add("scheduled")
        return True

    def _handle(self, messages: list[DispatchMessage]) -> bool:
        """ConsumerLoop's handler: put each dispatch into the scheduler (idempotent, so a batch
        handled again after one of its records failed schedules nothing twice)."""
        taken = [self.schedule(message) for message in messages]
        return all(taken)

    @property
    def health(self) -> HealthCheck:
        return consumers_check(self.loop.health)

    def _heartbeat(self, done: threading.Event) -> None:
        """Every third of a lease, extend the leases of the attempts running here, so that only
        an executor that went silent (killed, hung, cut off) has its attempts re-dispatched."""
        interval = self.settings.lease_seconds / 3
        while not done.wait(interval):
            self.runner.updates.write_pending()
            running = list(self.runner.running.values())
            if not running:
                continue
            try:
                with session_scope(self.settings) as session:
                    store.extend_leases(session, running, now=utcnow(), lease=self.settings.lease_seconds)
            except DatabaseUnavailable as exc:
                log.warning("could not extend the leases of %d running jobs: %s", len(running), exc)

    def _report_until_stopped(self) -> None:
        last = self.counters.snapshot()
        last_at = time.monotonic()
        while not self.stop.wait(1.0):
            now = self.counters.snapshot()
            elapsed = time.monotonic() - last_at
            if (now != last and elapsed >= STATUS_MIN_GAP) or elapsed >= STATUS_EVERY:
                log.info("executor: %s; %d waiting", now.line(), len(self.scheduler.get_jobs()))
                last, last_at = now, time.monotonic()

    def _shutdown(self) -> None:
        """Hand every not-yet-fired job back, let running ones finish, close the producer."""
        with self._closing_lock:
            self._closing = True
        self.scheduler.pause()
        # get_jobs takes the job-store lock, so a processing pass that started before the pause
        # has finished: what it returns has not been (and will not be) submitted.
        waiting = self.scheduler.get_jobs()
        for job in waiting:
            try:
                self.scheduler.remove_job(job.id)
            except JobLookupError:
                pass
        handed_back = self._hand_back([job.args[0] for job in waiting])
        before = self.counters.snapshot()
        self.scheduler.shutdown(wait=True)
        finished = self.counters.snapshot()
        done = (finished.succeeded + finished.failed + finished.retried) - (before.succeeded + before.failed + before.retried)
        self.producer.close()
        log.info(
            "executor stopped: handed back %d jobs, finished %d; %s",
            handed_back, done, finished.line(),
        )

    def _hand_back(self, messages: list[DispatchMessage]) -> int:
        """SCHEDULED again for dispatches and retries that did not fire, so the scanner
        re-dispatches them now rather than after their lease."""
        if not messages:
            return 0
        now = utcnow()
        handed = 0
        try:
            with session_scope(self.settings) as session:
                for message in messages:
                    if store.unclaim(session, message, now=now):
                        handed += 1
                    else:
                        log.info(
                            "job %s attempt %d not handed back (cancelled, finished or superseded meanwhile)",
                            message.job_id, message.attempt,
                        )
        except DatabaseUnavailable as exc:
            log.warning(
                "could not hand back %d jobs (%s); the scanner re-dispatches them when their "
                "leases run out", len(messages), exc,
            )
            return 0
        return handed
