"""Health of the background services (scanner, executors, result writer): what each consumer
knows of its group, as Prometheus metrics and as a small HTTP endpoint (``/healthz``,
``/metrics``), each service on its own port (``common.infra.metrics.endpoint_port``), on
127.0.0.1 by default."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client import Counter, Gauge

from common.infra.config import Settings
from common.infra.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

PARTITIONS = Gauge(
    "chronoq_consumer_partitions", "Partitions assigned to this member (0 while it is not in a stable group).",
    ["group", "topic"],
)
STUCK = Gauge(
    "chronoq_consumer_stuck",
    "1 while this member's group join has not completed for longer than CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS.",
    ["group", "topic"],
)
UNSTABLE_SECONDS = Gauge(
    "chronoq_consumer_unstable_seconds", "Seconds since this member last had a completed group join (0 when it has).",
    ["group", "topic"],
)
REJOINS = Counter(
    "chronoq_consumer_fresh_rejoins", "Times this member gave up a join that did not complete and rejoined fresh.",
    ["group", "topic"],
)
DEAD_LETTERED = Counter(
    "chronoq_consumer_dead_lettered", "Records sent to the dead-letter topic instead of being handled.",
    ["group", "topic"],
)
LAG = Gauge(
    "chronoq_consumer_lag",
    "Records on this member's partitions not yet fetched (high-water mark minus position), at its last poll.",
    ["group", "topic"],
)


@dataclass
class GroupHealth:
    """One consumer's view of its group membership; updated by the consumer loop's thread."""

    group: str
    topic: str
    partitions: int = 0
    stuck: bool = False
    rejoins: int = 0
    dead_lettered: int = 0
    #: Records behind the high-water marks of its partitions, at the last measure (None: unknown).
    lag: int | None = None
    #: time.monotonic() since when the member has had no completed join; None while it has one.
    unstable_since: float | None = field(default_factory=time.monotonic)

    def stable(self, partitions: int) -> None:
        self.partitions = partitions
        self.unstable_since = None
        self.stuck = False
        self._export()

    def unstable(self, now: float) -> float:
        """Record that the member is (still) joining; returns for how long it has been."""
        if self.unstable_since is None:
            self.unstable_since = now
        self.partitions = 0
        self._export(now)
        return now - self.unstable_since

    def gave_up_join(self) -> None:
        self.stuck = True
        self.rejoins += 1
        REJOINS.labels(self.group, self.topic).inc()
        self._export()

    def behind(self, records: int) -> None:
        """Record the member's lag (records on its partitions not yet fetched)."""
        self.lag = records
        LAG.labels(self.group, self.topic).set(records)

    def dead_letter(self) -> None:
        self.dead_lettered += 1
        DEAD_LETTERED.labels(self.group, self.topic).inc()

    def _export(self, now: float | None = None) -> None:
        PARTITIONS.labels(self.group, self.topic).set(self.partitions)
        STUCK.labels(self.group, self.topic).set(1 if self.stuck else 0)
        UNSTABLE_SECONDS.labels(self.group, self.topic).set(self.unstable_for(now))

    def unstable_for(self, now: float | None = None) -> float:
        if self.unstable_since is None:
            return 0.0
        return (now if now is not None else time.monotonic()) - self.unstable_since

    def report(self) -> dict[str, Any]:
        """The member's state for ``/healthz``."""
        return {
            "group": self.group,
            "topic": self.topic,
            "state": "stuck" if self.stuck else ("stable" if self.unstable_since is None else "joining"),
            "partitions": self.partitions,
            "unstable_seconds": round(self.unstable_for(), 1),
            "fresh_rejoins": self.rejoins,
            "dead_lettered": self.dead_lettered,
            "lag": self.lag,
        }


#: What a service reports: True when healthy, and details for the operator.
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def consumers_check(*members: GroupHealth) -> HealthCheck:
    """Healthy while no consumer is stuck in a group join."""

    def check() -> tuple[bool, dict[str, Any]]:
        reports = [m.report() for m in members]
        return not any(m.stuck for m in members), {"consumers": reports}

    return check


class HealthServer:
    """``GET /healthz`` (200 healthy, 503 not; JSON either way) and ``GET /metrics``
    (Prometheus text) on ``CHRONOQ_HEALTH_HOST`` and ``port`` (default ``CHRONOQ_HEALTH_PORT``,
    0: none), served by :class:`~common.infra.metrics.MetricsEndpoint` in a daemon thread."""

    def __init__(self, settings: Settings, check: HealthCheck, service: str, port: int | None = None) -> None:
        self.settings = settings
        self.check = check
        self.service = service
        #: None: no endpoint; 0: any free port.
        self.wanted = port if port is not None else (settings.health_port or None)
        self._server: MetricsEndpoint | None = None

    @property
    def port(self) -> int:
        """The port bound (0 while not serving)."""
        return self._server.port if self._server is not None else 0

    def start(self) -> "HealthServer":
        if self.wanted is None:
            return self
        check, service = self.check, self.service

        def healthz() -> tuple[int, dict[str, Any]]:
            ok, details = check()
            return (200 if ok else 503), {"status": "ok" if ok else "unhealthy", "service": service, **details}

        self._server = MetricsEndpoint(
            self.settings.health_host, self.wanted, routes={"/healthz": healthz}, name=f"{service}-metrics",
        ).start()
        log.info("%s health and metrics on %s/healthz and /metrics", service, self._server.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
