"""Starting and stopping a service. At start-up a bad setting or a database that cannot be used
ends the process with one line naming the variable and an exit code, not a traceback; after
that, SIGTERM/SIGINT set a stop event and a second signal exits at once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

if TYPE_CHECKING:
    from common.infra.config import Settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2        # a setting is missing or invalid
EXIT_UNAVAILABLE = 3   # the database or the broker could not be reached at start-up
EXIT_FORCED = 130      # a second signal cut the clean stop short

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def on_stop(stop: threading.Event, what: str = "service") -> Iterator[threading.Event]:
    """Within the block, the first SIGTERM/SIGINT sets ``stop``; a second one exits the process.
    The previous handlers are restored afterwards (so in-process tests are not affected)."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now without a clean stop", signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info(
            "%s received: %s is stopping cleanly (send it again to exit at once)",
            signal.Signals(signum).name, what,
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Service(Protocol):
    def run(self) -> None: ...


def load_or_exit(name: str) -> "Settings":
    """Settings from the environment; a bad one exits with code 2 and a line naming it. That
    includes a CHRONOQ_DATABASE_URL no engine can be built from (unknown scheme, driver not
    installed), found here without connecting."""
    from common.infra.config import load_settings
    from common.core.netguard import Policy
    from common.core.secrets import Keyring
    from common.infra.db import check_database_url
    from common.infra.errors import ConfigError
    from common.infra.kafka import security_options
    from common.infra.tracing import check as check_tracing

    try:
        settings = load_settings()
        check_database_url(settings)
        # Settings that are only read later (the first publish, the first http job) are checked
        # now, so a typo stops the service at start with exit code 2, not hours later.
        security_options(settings)
        Policy.from_settings(settings)
        Keyring.from_settings(settings)
        check_tracing(settings)  # CHRONOQ_TRACING=on without the otel extra
        return settings
    except ConfigError as exc:
        print(f"chronoq {name}: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def database_or_exit(name: str, settings: "Settings") -> None:
    """Exit with code 3 and one line naming CHRONOQ_DATABASE_URL unless the database answers.
    Only at start-up: once running, services wait an outage out instead."""
    from common.infra.db import check_database
    from common.infra.errors import ConfigError, DatabaseUnavailable

    try:
        check_database(settings)
    except ConfigError as exc:
        print(f"chronoq {name}: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except DatabaseUnavailable as exc:
        print(f"chronoq {name}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNAVAILABLE) from None


def run_service(name: str, build: Callable[["Settings", threading.Event], Service]) -> int:
    """The body of every ``python -m <service>``: load settings, set up logging, build the
    service and run it until SIGTERM/SIGINT."""
    from common.infra import tracing
    from common.infra.logs import setup_logging

    from common.infra.health import HealthServer
    from common.infra.metrics import endpoint_port

    settings = load_or_exit(name)
    setup_logging(settings.log_level, name, settings.log_format)
    database_or_exit(name, settings)
    tracing.setup(settings, name)
    try:
        with on_stop(threading.Event(), name) as stop:
            service = build(settings, stop)
            health = HealthServer(
                settings, getattr(service, "health", lambda: (True, {})), name, port=endpoint_port(settings, name),
            ).start()
            try:
                service.run()
            finally:
                health.stop()
    finally:
        tracing.shutdown()  # the spans of the last jobs are exported before the process ends
    return EXIT_OK
