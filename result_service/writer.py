"""The result writer: a consumer-group member on the updates topic that applies each batch in
one database transaction and commits the offsets only after that transaction committed. A
replayed or late message changes nothing (``common.core.store.apply_update`` is idempotent and
monotonic); a malformed one goes to the dead-letter topic."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from common.core import store
from common.infra.config import Settings
from common.infra.consumer import ConsumerLoop
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable, MessageError
from common.infra.kafka import Producer
from common.core.messages import DeadLetter, UpdateMessage, decode_update

log = logging.getLogger(__name__)

GROUP_ID = "chronoq-results"


class ResultWriter:
    """Applies updates until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: threading.Event, producer: Producer | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.producer = producer or Producer(settings, client_id="chronoq-results")
        self.applied = 0
        self.ignored = 0
        self.dead_lettered = 0
        self._last_report = time.monotonic()
        self.loop = ConsumerLoop(
            settings, topic=settings.topic_updates, group_id=GROUP_ID, handle=self.handle, stop=stop,
            client_id="chronoq-results",
        )

    def run(self) -> None:
        log.info("result writer started on %s", self.settings.topic_updates)
        self.loop.run()
        self.producer.close()
        log.info(
            "result writer stopped: %d updates moved a job forward, %d only added history "
            "(already applied, duplicate or stale), %d dead-lettered",
            self.applied, self.ignored, self.dead_lettered,
        )

    def handle(self, records: Sequence[Any]) -> bool:
        """Record a batch; False only when stopped while the database was unavailable."""
        updates: list[tuple[Any, UpdateMessage]] = []
        for record in records:
            try:
                updates.append((record, decode_update(record.value, self.settings.max_message_bytes)))
            except MessageError as exc:
                log.warning(
                    "malformed update at %s[%d]@%d sent to %s: %s",
                    record.topic, record.partition, record.offset, self.settings.topic_dlq, exc,
                )
                self.producer.dead_letter(DeadLetter.from_record(record, str(exc)))
                self.dead_lettered += 1
        backoff = 0.5
        while True:
            try:
                self._apply(updates)
                break
            except DatabaseUnavailable as exc:
                if self.stop.is_set():
                    return False
                log.warning("database unavailable (%s); %d updates wait, retrying in %.1fs", exc, len(updates), backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self._report()
        return True

    def _apply(self, updates: list[tuple[Any, UpdateMessage]]) -> None:
        try:
            with session_scope(self.settings) as session:
                moved = store.apply_updates(session, [m for _, m in updates], lease=self.settings.lease_seconds)
        except DatabaseUnavailable:
            raise
        except Exception:  # noqa: BLE001 - one bad update must not block the partition
            log.exception("batch of %d updates failed; applying them one by one", len(updates))
            moved = 0
            for record, message in updates:
                try:
                    with session_scope(self.settings) as session:
                        moved += store.apply_update(session, message, lease=self.settings.lease_seconds)
                except DatabaseUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001
                    log.error("job %s: update could not be applied, dead-lettered: %r", message.job_id, exc)
                    self.producer.dead_letter(DeadLetter.from_record(record, f"could not be applied: {exc!r}"))
                    self.dead_lettered += 1
        self.applied += moved
        self.ignored += len(updates) - moved
        for _, message in updates:
            log.debug("job %s attempt %d: %s", message.job_id, message.attempt, message.status)

    def _report(self) -> None:
        if time.monotonic() - self._last_report >= 60:
            self._last_report = time.monotonic()
            log.info(
                "%d updates moved a job forward, %d only added history, %d dead-lettered so far",
                self.applied, self.ignored, self.dead_lettered,
            )
