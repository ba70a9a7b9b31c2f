"""The executor's Prometheus metrics, kept off the fire path: a fire only appends (type, start,
due) to a deque, and the lateness histogram is fed from it every second by the status thread
(and at each scrape); the counts of attempts are read from the executor's own counters when
Prometheus scrapes, so a fire adds no metric update of its own."""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.infra.metrics import COUNT_BUCKETS, LATENCY_BUCKETS, LATENESS_BUCKETS

if TYPE_CHECKING:
    from executor_service.service import Executor

#: What a fire leaves for the lateness histogram: the run's type, when its handler started,
#: when the attempt was due. Bounded: a scrape-less executor that stalled its status thread
#: must not grow without end (the oldest are dropped then).
Fires = deque  # deque[tuple[str, datetime, datetime]]
FIRES_KEPT = 200_000

#: The outcomes of ``executor_service.stats`` exported as ``chronoq_executor_attempts_total``.
OUTCOMES = ("succeeded", "failed", "retried", "skipped")


class _Executors(Collector):
    """Counts and gauges of the live executors of this process (tests run several), read from
    their counters at scrape time. Registered before the histograms below, so a scrape
    drains the waiting lateness samples before the histogram is read."""

    def __init__(self) -> None:
        self.live: "weakref.WeakSet[Executor]" = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        executors = list(self.live)
        for executor in executors:
            observe_fires(executor.runner.fires)
        attempts = CounterMetricFamily(
            "chronoq_executor_attempts", "Attempts that ended or did not start, by outcome "
            "(succeeded; failed: no retry left, or missed; retried: failed with a retry to come; "
            "skipped: cancelled, superseded or finished meanwhile).", labels=["outcome"],
        )
        fired = CounterMetricFamily("chronoq_executor_fires", "Attempts whose time came (started or not).")
        scheduled = CounterMetricFamily(
            "chronoq_executor_scheduled", "Dispatches and retries taken into the timer (duplicates not counted).",
        )
        waiting = GaugeMetricFamily(
            "chronoq_executor_waiting_attempts", "Attempts held in memory waiting for their time.",
        )
        running = GaugeMetricFamily("chronoq_executor_running_attempts", "Attempts running now.")
        snapshots = [e.counters.snapshot() for e in executors]
        for outcome in OUTCOMES:
            attempts.add_metric([outcome], sum(getattr(s, outcome) for s in snapshots))
        fired.add_metric([], sum(s.fired for s in snapshots))
        scheduled.add_metric([], sum(s.scheduled for s in snapshots))
        waiting.add_metric([], sum(max(0, s.scheduled - s.fired) for s in snapshots))
        running.add_metric([], sum(e.runner.active for e in executors))
        yield from (attempts, fired, scheduled, waiting, running)


EXECUTORS = _Executors()
REGISTRY.register(EXECUTORS)

LATENESS = Histogram(
    "chronoq_executor_fire_lateness_seconds",
    "How late each attempt's handler started: the moment it started minus the attempt's due time, by job type.",
    ["type"], buckets=LATENESS_BUCKETS,
)
CLAIM_SECONDS = Histogram(
    "chronoq_executor_claim_seconds",
    "Time of one start-claim statement (a batch of attempts claimed ahead), waits for the database included.",
    buckets=LATENCY_BUCKETS,
)
CLAIM_BATCH = Histogram(
    "chronoq_executor_claim_batch_attempts", "Attempts claimed together in one start-claim statement.",
    buckets=COUNT_BUCKETS,
)
WRITE_SECONDS = Histogram(
    "chronoq_executor_write_seconds", "Time of one group commit of attempt ends to the database.",
    buckets=LATENCY_BUCKETS,
)
DEAD_LETTERED = Counter(
    "chronoq_executor_dead_lettered", "Jobs that finally failed here, sent to the dead-letter topic.",
)
PUBLISH_SECONDS = Histogram(
    "chronoq_executor_publish_seconds",
    "Time to publish one batch of updates and have the broker acknowledge it.", buckets=LATENCY_BUCKETS,
)


def new_fires() -> Fires:
    return deque(maxlen=FIRES_KEPT)


def observe_fires(fires: Fires) -> int:
    """Move the waiting lateness samples into the histogram; returns how many (any thread)."""
    moved = 0
    while True:
        try:
            kind, started, due = fires.popleft()
        except IndexError:
            return moved
        LATENESS.labels(kind).observe((started - due).total_seconds())
        moved += 1


def track(executor: "Executor") -> None:
    """Export ``executor``'s counts while it lives."""
    EXECUTORS.live.add(executor)
