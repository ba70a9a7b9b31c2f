"""Health of the background services (scanner, executors, result writer): what each consumer
knows of its group, as Prometheus metrics and as a small HTTP endpoint (``/healthz``,
``/metrics``) that is off unless ``CHRONOQ_HEALTH_PORT`` opens it, on 127.0.0.1 by default."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

from common.infra.config import Settings

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


@dataclass
class GroupHealth:
    """One consumer's view of its group membership; updated by the consumer loop's thread."""

    group: str
    topic: str
    partitions: int = 0
    stuck: bool = False
    rejoins: int = 0
    dead_lettered: int = 0
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
    (Prometheus text) on ``CHRONOQ_HEALTH_HOST:CHRONOQ_HEALTH_PORT``, in a daemon thread."""

    def __init__(self, settings: Settings, check: HealthCheck, service: str) -> None:
        self.settings = settings
        self.check = check
        self.service = service
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "HealthServer":
        if not self.settings.health_port:
            return self
        check, service = self.check, self.service

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server naming
                if self.path.split("?")[0] == "/healthz":
                    ok, details = check()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", "service": service, **details}).encode()
                    self._answer(200 if ok else 503, body, "application/json")
                elif self.path.split("?")[0] == "/metrics":
                    self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                else:
                    self._answer(404, b'{"status": "not found"}', "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: not worth a line
                pass

        self._server = ThreadingHTTPServer((self.settings.health_host, self.settings.health_port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        log.info("health and metrics on http://%s:%d/healthz and /metrics",
                 self.settings.health_host, self.settings.health_port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
