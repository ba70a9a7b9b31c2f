"""What a request needs besides its arguments: the app's settings, metrics and Kafka producer,
and the one clock reading of the request."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime

from flask import current_app, g, has_app_context

from common.infra import clock
from common.infra.config import Settings
from common.infra.kafka import Producer

from common.core.secrets import Keyring

from api.audit_writer import AuditWriter
from api.metrics import Metrics
from api.quotas import Quotas
from api.ratelimit import Limiter

log = logging.getLogger(__name__)

EXTENSION = "chronoq"


class Runtime:
    """Per-app state: settings, metrics, and a producer created lazily in each process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keyring = Keyring.from_settings(settings)
        self.limiter = Limiter(settings)
        self.quotas = Quotas(settings, self.limiter, self.keyring)
        self.audit = AuditWriter(settings)
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._producer_pid: int | None = None

    def producer(self) -> Producer:
        """This process's producer. Created on first use and again after a fork, because
        gunicorn may import the app in the master and a Kafka client's sockets and threads do
        not survive ``fork()``."""
        with self._lock:
            if self._producer is None or self._producer_pid != os.getpid():
                self._producer = Producer(self.settings, client_id="chronoq-api")
                self._producer_pid = os.getpid()
            return self._producer

    def close(self) -> None:
        """Write the pending audit rows; flush and close this process's producer, if it made one."""
        self.audit.close()
        with self._lock:
            producer, self._producer = self._producer, None
            owned = self._producer_pid == os.getpid()
        if producer is not None and owned:
            try:
                producer.close(timeout=5)
            except Exception:  # noqa: BLE001 - shutting down; nothing left to do about it
                log.warning("closing the Kafka producer failed", exc_info=True)


def runtime() -> Runtime:
    """The current app's :class:`Runtime`."""
    return current_app.extensions[EXTENSION]


def current_settings() -> Settings:
    return runtime().settings


def request_now() -> datetime:
    """The clock, read once per request (schemas and views share it); outside a request, now."""
    if not has_app_context():
        return clock.utcnow()
    if "chronoq_now" not in g:
        g.chronoq_now = clock.utcnow()
    return g.chronoq_now
