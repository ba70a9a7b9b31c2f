"""Claim jobs and publish them to the jobs topic; shared by the scanner, the API's direct
dispatch and whoever settles a workflow's task (its dependents released in that transaction
start at once). The claim commits before the publish: a message that is then not acknowledged
puts its job back to SCHEDULED, and one that was lost later is recovered by the lease."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy.orm import Session

from common.core import store, workflow_release
from common.infra import clock
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import BrokerUnavailable, DatabaseUnavailable
from common.infra import tracing
from common.infra.kafka import Producer, records
from common.infra.logs import job_fields
from common.core.messages import encode_dispatch
from common.infra.deadletter import DeadLetter

log = logging.getLogger(__name__)


@dataclass
class DispatchResult:
    published: int = 0
    unpublished: int = 0  # put back to SCHEDULED for the next scan
    exhausted: int = 0    # FAILED: lease ran out and no retries were left

    def __iadd__(self, other: "DispatchResult") -> "DispatchResult":
        self.published += other.published
        self.unpublished += other.unpublished
        self.exhausted += other.exhausted
        return self


def dispatch(
    settings: Settings,
    producer: Producer,
    claim: Callable[[Session], store.Claimed],
    *,
    now: datetime,
) -> DispatchResult:
    """Run ``claim`` in one transaction, then publish what it claimed, keyed by job id (and the
    workflow tasks that transaction released, if it failed a task for good)."""
    with session_scope(settings) as session:
        claimed = claim(session)
        released = workflow_release.released(session)
    if released:
        dispatch_released(settings, producer, released)
    for job_id in claimed.exhausted:
        log.error("job %s FAILED: its lease ran out and no retries are left", job_id, extra=job_fields(job_id))
        producer.dead_letter(DeadLetter(reason="lease expired, retries exhausted", job_id=str(job_id)))
    result = DispatchResult(exhausted=len(claimed.exhausted))
    if not claimed.messages:
        return result
    with tracing.dispatch_spans(claimed.messages) as headers:
        acked = producer.send_all(settings.topic_jobs, records(claimed.messages, encode_dispatch, headers))
    failed = [m for m, ok in zip(claimed.messages, acked) if not ok]
    result.published = len(claimed.messages) - len(failed)
    if failed:
        with session_scope(settings) as session:
            store.unclaim_all(session, failed, now=now)
        result.unpublished = len(failed)
        log.warning("%d dispatches not acknowledged by Kafka; put back for the next scan", len(failed))
    return result


def dispatch_released(settings: Settings, producer: Producer, released: list[uuid.UUID]) -> DispatchResult:
    """Claim and publish the workflow tasks a committed transaction released (SCHEDULED, due
    now: ``workflow_release.released``), so that each starts within milliseconds of the end of
    its last dependency. A task not claimed here (another writer got it first) or not
    published stays with the scanner."""
    if not released:
        return DispatchResult()
    now = clock.utcnow()
    try:
        return dispatch(
            settings, producer,
            lambda session: store.claim_ids(session, released, now=now, lease=settings.lease_seconds), now=now,
        )
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        # Best effort on top of a settle that has committed: the tasks are SCHEDULED and due.
        log.warning("%d released workflow tasks left for the scanner's next pass (%s); first: job %s",
                    len(released), exc, released[0])
        return DispatchResult()
