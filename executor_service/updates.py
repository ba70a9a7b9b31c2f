"""Reporting transitions. RUNNING is published fire-and-forget (the job must not wait for the
broker; the start claim already wrote it to the database). An attempt's end (SUCCESS, FAILED,
RETRYING) is written through to the database *and* published, acknowledged, with a few
retries: the result writer applies the same update idempotently, so the outcome survives the
loss of either path (a broker that lost its log, or a database that was away)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from common.core import store
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import BrokerUnavailable, DatabaseUnavailable
from common.infra.kafka import Producer
from common.infra.retry import PUBLISH, GaveUp, retry
from common.core.messages import UpdateMessage, encode_update

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 64 * 1024  # bytes of JSON output kept in an update
ERROR_LIMIT = 4000        # characters of an error message kept
PUBLISH_TRIES = 4


def safe_output(value: Any, limit: int = OUTPUT_LIMIT) -> Any:
    """``value`` as JSON-compatible data no larger than ``limit`` bytes once encoded; a larger
    one becomes ``{"truncated": true, "size": n, "preview": "<first bytes of the JSON>"}``."""
    try:
        encoded = json.dumps(value, default=str)
    except (TypeError, ValueError):  # circular structures and the like
        encoded = json.dumps(repr(value))
    if len(encoded.encode()) <= limit:
        return json.loads(encoded)
    return {"truncated": True, "size": len(encoded.encode()), "preview": encoded[: limit // 2]}


def short_error(exc: BaseException | str) -> str:
    """An error line for the update and the history: type and message, bounded."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LIMIT else text[:ERROR_LIMIT] + "…(truncated)"


class Updates:
    """Sends :class:`UpdateMessage` s for one executor."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self.settings = settings
        self.producer = producer
        self._lock = threading.Lock()
        #: Attempt ends not yet written to the database; the heartbeat writes them when it is back.
        self.pending: list[UpdateMessage] = []

    def running(self, update: UpdateMessage) -> None:
        """Queue RUNNING without waiting for the ack; a failure is only logged (the terminal
        update that follows carries started_at too)."""
        try:
            self.producer.send(self.settings.topic_updates, update.key, encode_update(update))
        except BrokerUnavailable as exc:
            log.warning("job %s: RUNNING update not published: %s", update.job_id, exc)

    def final(self, update: UpdateMessage) -> bool:
        """Record the end of an attempt in the database, then publish it; True when at least
        one of the two took it."""
        recorded = self._record(update)
        if not recorded:
            with self._lock:
                self.pending.append(update)
        published = self._publish(update)
        if not (recorded or published):
            log.error(
                "job %s: %s of attempt %d neither recorded nor published; the scanner "
                "re-dispatches the job once its lease runs out",
                update.job_id, update.status, update.attempt,
            )
        return recorded or published

    def write_pending(self) -> int:
        """Write through the attempt ends the database missed (called by the heartbeat)."""
        with self._lock:
            pending = list(self.pending)
        if not pending:
            return 0
        try:
            with session_scope(self.settings) as session:
                store.apply_updates(session, pending, lease=self.settings.lease_seconds)
        except DatabaseUnavailable:
            return 0
        with self._lock:
            self.pending = [u for u in self.pending if u not in pending]
        log.info("wrote %d attempt ends through to the database after it came back", len(pending))
        return len(pending)

    def _record(self, update: UpdateMessage) -> bool:
        try:
            with session_scope(self.settings) as session:
                store.apply_updates(session, [update], lease=self.settings.lease_seconds)
            return True
        except DatabaseUnavailable as exc:
            log.warning("job %s: %s not written to the database (%s); the result writer will", update.job_id, update.status, exc)
            return False

    def _publish(self, update: UpdateMessage) -> bool:
        value = encode_update(update)
        try:
            retry(
                lambda: self.producer.send_and_wait(self.settings.topic_updates, update.key, value),
                on=BrokerUnavailable, backoff=PUBLISH, tries=PUBLISH_TRIES, logger=log,
                what=f"job {update.job_id}: publish of the {update.status} update of attempt {update.attempt}",
            )
            return True
        except GaveUp as exc:
            log.error("%s", exc)
            return False
