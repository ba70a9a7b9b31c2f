"""The scanner's Prometheus metrics: what each pass claimed and published, how long it took,
and what it found waiting when it started (overdue jobs not yet dispatched, in-flight jobs
whose lease ran out)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from common.core.dispatch import DispatchResult
from common.core.models import Job
from common.core.states import JobStatus
from common.infra.metrics import COUNT_BUCKETS, LATENCY_BUCKETS

PASSES = Counter("chronoq_scanner_passes", "Scanner passes (window boundaries and sweeps), by outcome.", ["outcome"])
PASS_SECONDS = Histogram(
    "chronoq_scanner_pass_duration_seconds", "Time of one successful pass: claim, publish, make occurrences.",
    buckets=LATENCY_BUCKETS,
)
PASS_CLAIMED = Histogram(
    "chronoq_scanner_pass_claimed_jobs", "Jobs claimed by one successful pass.", buckets=COUNT_BUCKETS,
)
JOBS = Counter(
    "chronoq_scanner_jobs",
    "Jobs claimed by the scanner, by what became of them (published; unpublished: the broker did not "
    "acknowledge, put back for the next pass; lost: lease ran out with no retry left, FAILED).",
    ["result"],
)
OVERDUE = Gauge(
    "chronoq_scanner_overdue_jobs", "SCHEDULED jobs already due and not yet dispatched when the last pass started.",
)
EXPIRED = Gauge(
    "chronoq_scanner_expired_leases",
    "In-flight jobs whose lease had run out when the last pass started (it dispatches them again).",
)
EXPIRED_TOTAL = Counter(
    "chronoq_scanner_expired_leases_found", "Expired leases found at the start of passes, summed over passes.",
)
LAST_PASS = Gauge(
    "chronoq_scanner_last_pass_timestamp_seconds", "Unix time of the last successful pass (alert when it stops moving).",
)

#: Statuses of a job an executor holds or runs: its lease may run out.
_IN_FLIGHT = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)


def measure_backlog(session: Session, now: datetime) -> tuple[int, int]:
    """(overdue SCHEDULED jobs, in-flight jobs whose lease ran out) at ``now``; both counts use
    the partial indexes the claims use."""
    overdue = session.scalar(
        sa.select(sa.func.count()).select_from(Job)
        .where(Job.status == JobStatus.SCHEDULED.value, Job.execute_at < now)
    ) or 0
    expired = session.scalar(
        sa.select(sa.func.count()).select_from(Job).where(Job.status.in_(_IN_FLIGHT), Job.lease_until < now)
    ) or 0
    OVERDUE.set(overdue)
    EXPIRED.set(expired)
    EXPIRED_TOTAL.inc(expired)
    return overdue, expired


def observe_pass(result: DispatchResult, seconds: float, finished: float) -> None:
    """Record one successful pass that took ``seconds`` and ended at Unix time ``finished``."""
    PASSES.labels("ok").inc()
    PASS_SECONDS.observe(seconds)
    PASS_CLAIMED.observe(result.published + result.unpublished + result.exhausted)
    JOBS.labels("published").inc(result.published)
    JOBS.labels("unpublished").inc(result.unpublished)
    JOBS.labels("lost").inc(result.exhausted)
    LAST_PASS.set(finished)


def failed_pass() -> None:
    PASSES.labels("failed").inc()
