"""The result writer: a consumer-group member on the updates topic that applies each batch in
one database transaction and commits the offsets only after that transaction committed. A
replayed or late message changes nothing (``common.core.store.apply_update`` is idempotent and
monotonic); a malformed one, or one the database refuses, goes to the dead-letter topic
(``common.infra.consumer``)."""

from __future__ import annotations

import logging
import threading
import time

from common.core import store, workflow_release
from common.core.dispatch import dispatch_released
from common.core.messages import UpdateMessage, decode_update
from common.infra import tracing
from common.infra.config import Settings
from common.infra.consumer import ConsumerLoop
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable
from common.infra.health import HealthCheck, consumers_check
from common.infra.kafka import Producer
from common.infra.logs import job_fields
from common.infra.retry import DATABASE, GaveUp, retry

from result_service import metrics

log = logging.getLogger(__name__)


class ResultWriter:
    """Applies updates until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: threading.Event, producer: Producer | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.producer = producer or Producer(settings, client_id="chronoq-results")
        self.applied = 0
        self.ignored = 0
        self._last_report = time.monotonic()
        self.loop: ConsumerLoop[UpdateMessage] = ConsumerLoop(
            settings, topic=settings.topic_updates, group_id=settings.results_group, decode=decode_update,
            handle=self.handle, stop=stop, producer=self.producer, client_id="chronoq-results",
        )

    @property
    def dead_lettered(self) -> int:
        return self.loop.health.dead_lettered

    @property
    def health(self) -> HealthCheck:
        return consumers_check(self.loop.health)

    def run(self) -> None:
        log.info("result writer started on %s (group %s)", self.settings.topic_updates, self.settings.results_group)
        self.loop.run()
        self.producer.close()
        log.info(
            "result writer stopped: %d updates moved a job forward, %d only added history "
            "(already applied, duplicate or stale), %d dead-lettered",
            self.applied, self.ignored, self.dead_lettered,
        )

    def handle(self, updates: list[UpdateMessage]) -> bool:
        """Record a batch in one transaction, waiting out a database outage; False only when
        stopped while the database was unavailable. Any other error goes to the consumer loop,
        which then finds and dead-letters the update that caused it."""
        started = time.perf_counter()
        # With tracing on, each update that travelled with a trace is recorded in a span of it.
        traced = [u for u in updates if u.trace] if tracing.active() else []
        try:
            with tracing.spans(traced, lambda u: f"record {u.status}", parent=lambda u: u.trace, kind="consumer",
                               attributes=tracing.attempt_attributes):
                moved = retry(
                    lambda: self._apply(updates), on=DatabaseUnavailable, backoff=DATABASE, stop=self.stop,
                    what=f"recording {len(updates)} updates (database unavailable)", logger=log,
                )
        except GaveUp:
            return False
        self.applied += moved
        self.ignored += len(updates) - moved
        metrics.observe_batch(len(updates), moved, time.perf_counter() - started)
        self._report()
        return True

    def _apply(self, updates: list[UpdateMessage]) -> int:
        with session_scope(self.settings) as session:
            moved = store.apply_updates(session, updates, lease=self.settings.lease_seconds)
            released = workflow_release.released(session)
        # Workflow tasks released by these ends (when the executors' own write-through did not
        # get there first): due now, so published now.
        dispatch_released(self.settings, self.producer, released)
        for message in updates if log.isEnabledFor(logging.DEBUG) else ():
            log.debug("job %s attempt %d: %s", message.job_id, message.attempt, message.status,
                      extra=job_fields(message.job_id, message.attempt, message.token))
        return moved

    def _report(self) -> None:
        if time.monotonic() - self._last_report >= 60:
            self._last_report = time.monotonic()
            log.info(
                "%d updates moved a job forward, %d only added history, %d dead-lettered so far",
                self.applied, self.ignored, self.dead_lettered,
            )
