"""Creating a job: the idempotent insert, then the direct dispatch of a job due too soon for
the scanner (on time even when created seconds before it is due; README, "What chronoq
guarantees")."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from common.infra.clock import ensure_aware
from common.infra.db import session_scope
from common.core.dispatch import dispatch_ids
from common.infra.errors import BrokerUnavailable, DatabaseUnavailable
from common.core.models import Job
from common.core.states import JobStatus
from common.core.windows import needs_direct_dispatch

from api.context import Runtime
from api.errors import IdempotencyConflict

log = logging.getLogger(__name__)


def request_hash(body: Any) -> str:
    """sha256 of the body as canonical JSON (sorted keys, no spaces), so that a repeat with
    the keys in another order or other whitespace counts as the same request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_job(
    rt: Runtime, fields: dict[str, Any], *, now: datetime, idempotency_key: str | None, body_hash: str
) -> tuple[Job, bool]:
    """Store a job from validated ``fields``; returns it and whether it is new. With an
    ``idempotency_key`` already used for the same body, the first job is returned instead;
    for a different body, :class:`IdempotencyConflict`."""
    settings = rt.settings
    job = Job(
        id=uuid.uuid4(),
        status=JobStatus.SCHEDULED.value,
        created_at=now,
        updated_at=now,
        idempotency_key=idempotency_key,
        request_hash=body_hash if idempotency_key else None,
        **fields,
    )
    try:
        with session_scope(settings) as session:
            existing = _by_key(session, idempotency_key) if idempotency_key else None
            if existing is None:
                session.add(job)
    except IntegrityError:
        # Two identical requests raced past the lookup; the unique key let one insert win.
        if not idempotency_key:
            raise
        with session_scope(settings) as session:
            existing = _by_key(session, idempotency_key)
        if existing is None:
            raise
    if existing is not None:
        if existing.request_hash != body_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency_key!r} was already used with a different request body "
                f"(job {existing.id}); use a new key for a new job"
            )
        return existing, False
    rt.metrics.jobs_created.labels(job.type).inc()
    log.info("job %s created: %s %r due %s", job.id, job.type, job.name, job.execute_at.isoformat())
    return job, True


def _by_key(session: Any, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def dispatch_if_due(rt: Runtime, job: Job, *, now: datetime) -> Job:
    """Publish ``job`` now when the scanner may already have passed over its window, and
    return it as it is afterwards. A failure leaves it SCHEDULED for the next scan, so it is
    logged, never raised: the job is stored and the client must hear so."""
    settings = rt.settings
    if job.status != JobStatus.SCHEDULED.value or not needs_direct_dispatch(
        ensure_aware(job.execute_at), now, settings.scan_interval_seconds
    ):
        return job
    try:
        result = dispatch_ids(settings, rt.producer(), [job.id], now=now)
    except (BrokerUnavailable, DatabaseUnavailable) as exc:
        rt.metrics.direct_dispatches.labels("failed").inc()
        log.warning("job %s: direct dispatch failed (%s); it stays SCHEDULED for the scanner", job.id, exc)
        return job
    except Exception:  # noqa: BLE001 - the job is committed; a 500 now would invite a duplicate
        rt.metrics.direct_dispatches.labels("failed").inc()
        log.exception("job %s: direct dispatch failed; it stays SCHEDULED for the scanner", job.id)
        return job
    if result.published:
        rt.metrics.direct_dispatches.labels("published").inc()
    else:
        rt.metrics.direct_dispatches.labels("unpublished").inc()
        log.warning("job %s: Kafka did not acknowledge its direct dispatch; it stays SCHEDULED for the scanner", job.id)
    try:
        with session_scope(settings) as session:
            return session.get(Job, job.id) or job
    except DatabaseUnavailable as exc:
        log.warning("job %s: could not re-read it after its direct dispatch: %s", job.id, exc)
        return job
