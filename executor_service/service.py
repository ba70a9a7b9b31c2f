"""The Executor: one thread polls the jobs topic and puts each dispatch into APScheduler with a
date trigger at its ``execute_at``; APScheduler's pool runs it (:mod:`executor_service.runner`).
Offsets are committed once a batch is in the scheduler; a dispatch lost with this process is
re-dispatched by the scanner when its lease runs out."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone
from typing import Any, Sequence

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from common.core import store
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.consumer import ConsumerLoop
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable, MessageError
from common.infra.kafka import Producer
from common.core.messages import DeadLetter, DispatchMessage, decode_dispatch

from executor_service.runner import Runner
from executor_service.stats import Counters

log = logging.getLogger(__name__)

GROUP_ID = "chronoq-executors"
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
            group_id=GROUP_ID,
            handle=self._handle,
            stop=stop,
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
            self.settings.resolved_executor_id, self.settings.topic_jobs, GROUP_ID, self.settings.executor_workers,
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

    def _handle(self, records: Sequence[Any]) -> bool:
        """ConsumerLoop's handler: every record is scheduled or dead-lettered; never raises, so
        a bad message cannot stop the loop or block its partition."""
        for record in records:
            try:
                message = decode_dispatch(record.value, self.settings.max_message_bytes)
            except MessageError as exc:
                self._dead_letter(record, str(exc))
                continue
            try:
                self.schedule(message)
            except Exception as exc:  # the scheduler refused it; recorded, and the lease recovers the job
                log.exception("job %s: could not schedule dispatch %s", message.job_id, message.token)
                self._dead_letter(record, f"could not schedule: {exc}")
        return True

    def _dead_letter(self, record: Any, reason: str) -> None:
        key = record.key.decode(errors="replace") if record.key is not None else None
        log.warning(
            "malformed message at %s[%d]@%d (key %s) sent to %s: %s",
            record.topic, record.partition, record.offset, key, self.settings.topic_dlq, reason,
        )
        self.producer.dead_letter(DeadLetter.from_record(record, reason))

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
