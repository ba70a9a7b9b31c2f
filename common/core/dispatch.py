"""Claim jobs and publish them to the jobs topic; shared by the scanner and the API's direct
dispatch. The claim commits before the publish: a message that is then not acknowledged
puts its job back to SCHEDULED, and one that was lost later is recovered by the lease."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy.orm import Session

from common.core import store
from common.infra.config import Settings
from common.infra.db import session_scope
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
    """Run ``claim`` in one transaction, then publish what it claimed, keyed by job id."""
    with session_scope(settings) as session:
        claimed = claim(session)
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
