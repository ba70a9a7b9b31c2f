"""The result writer's Prometheus metrics. Dead-lettered records and the consumer lag are the
consumer loop's (``chronoq_consumer_dead_lettered_total``, ``chronoq_consumer_lag``, labelled
with the group)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from common.infra.metrics import COUNT_BUCKETS, LATENCY_BUCKETS

UPDATES = Counter(
    "chronoq_results_updates",
    "Updates recorded, by result (applied: moved a job forward; ignored: only history, or already "
    "applied, duplicate or stale).",
    ["result"],
)
BATCH_SECONDS = Histogram(
    "chronoq_results_batch_seconds", "Time to record one batch of updates in its transaction, waits included.",
    buckets=LATENCY_BUCKETS,
)
BATCH_UPDATES = Histogram("chronoq_results_batch_updates", "Updates in one recorded batch.", buckets=COUNT_BUCKETS)


def observe_batch(size: int, applied: int, seconds: float) -> None:
    """Record one batch of ``size`` updates of which ``applied`` moved a job, in ``seconds``."""
    UPDATES.labels("applied").inc(applied)
    UPDATES.labels("ignored").inc(size - applied)
    BATCH_SECONDS.observe(seconds)
    BATCH_UPDATES.observe(size)
