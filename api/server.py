"""Serving the app with gunicorn, configured from chronoq's settings rather than gunicorn's
command line."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from common.infra import tracing
from common.infra.config import Settings
from common.infra.db import dispose_engines
from common.infra.logs import make_formatter
from common.infra.metrics import (
    MetricsEndpoint, disable_multiprocess, enable_multiprocess, endpoint_port, multiprocess_dir,
    multiprocess_registry, process_dead,
)

from api.app import create_app
from api.context import EXTENSION
from api.publish import EXTENSION as PUBLISHER

log = logging.getLogger(__name__)

# Threads per worker: a create spends longer waiting for PostgreSQL (a commit waits for its WAL
# flush) than running Python, so a worker needs several requests in flight to keep its core busy.
THREADS = 8
GRACEFUL_TIMEOUT = 30  # seconds a worker gets after SIGTERM to finish its requests


class StderrLogger(glogging.Logger):
    """gunicorn's logger with the access log on stderr (gunicorn puts ``-`` on stdout), in
    chronoq's format when that is JSON (one format for a log pipeline to read)."""

    #: Set by :class:`ApiServer` from ``CHRONOQ_LOG_FORMAT``; None: gunicorn's own text.
    formatter: logging.Formatter | None = None

    def _set_handler(self, log: logging.Logger, output: Any, fmt: logging.Formatter, stream: Any = None) -> None:
        super()._set_handler(log, output, self.formatter or fmt, stream=sys.stderr)


def _post_fork(server: Any, worker: Any) -> None:
    # Pooled connections opened before the fork would be shared with the master and the
    # other workers; each worker opens its own.
    dispose_engines()


def _child_exit(server: Any, worker: Any) -> None:
    # In the master: the worker's counts stay in the totals, its live gauges go.
    process_dead(worker.pid)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {}) if app is not None else {}
    runtime = extensions.get(EXTENSION)
    if runtime is not None:
        runtime.close()  # flushes the producer: the last acknowledgements and refusals come in
    publisher = extensions.get(PUBLISHER)
    if publisher is not None:
        publisher.close()  # then the refused dispatches are handed back before the worker goes
    tracing.shutdown()  # the worker's last spans are exported
    dispose_engines()


class ApiServer(BaseApplication):
    """gunicorn running :func:`api.app.create_app`: ``settings.api_workers`` gthread workers
    with :data:`THREADS` threads each on ``settings.api_host:settings.api_port``."""

    def __init__(self, settings: Settings, app: Flask | None = None) -> None:
        self.settings = settings
        self.app = app
        #: The master's metrics endpoint (multiprocess mode only), once gunicorn is ready.
        self.metrics: MetricsEndpoint | None = None
        super().__init__()

    def _when_ready(self, server: Any) -> None:
        # In the master, which outlives its workers: the sum of every worker's metrics on a
        # port of its own, without a credential (loopback unless CHRONOQ_HEALTH_HOST opens it).
        path, port = multiprocess_dir(), endpoint_port(self.settings, "api")
        if path is None or port is None:
            return
        self.metrics = MetricsEndpoint(self.settings.health_host, port, registry=multiprocess_registry(path),
                                       name="api-metrics").start()
        log.info("API metrics of all workers on %s/metrics", self.metrics.url)

    def load_config(self) -> None:
        settings = self.settings
        StderrLogger.formatter = make_formatter("api", "json") if settings.log_format == "json" else None
        options = {
            "bind": f"{settings.api_host}:{settings.api_port}",
            "workers": settings.api_workers,
            "worker_class": "gthread",
            "threads": THREADS,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "timeout": 60,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "logger_class": StderrLogger,
            "proc_name": "chronoq-api",
            # gunicorn 23+ opens a control socket at one fixed path per user, which a second
            # API on the same host would fight over; chronoq does not use it.
            "control_socket_disable": True,
            "post_fork": _post_fork,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            "when_ready": self._when_ready,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Each worker builds its app after the fork, unless one was given (tests, embedding);
        # and starts tracing there, as the exporter's thread does not survive a fork.
        if self.app is not None:
            return self.app
        tracing.setup(self.settings, "api")
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    """Run the API until SIGTERM/SIGINT (gunicorn stops the workers gracefully)."""
    log.info(
        "API listening on http://%s:%d with %d workers", settings.api_host, settings.api_port, settings.api_workers
    )
    # The workers' metrics in files of one directory of this run, so /metrics on any worker
    # answers for all of them; made before the fork, removed when the server stops.
    metrics_dir = tempfile.mkdtemp(prefix="chronoq-api-metrics-")
    enable_multiprocess(metrics_dir)
    master = os.getpid()
    server = ApiServer(settings)
    try:
        server.run()
    finally:
        # A worker leaves gunicorn's loop through here too (SystemExit); only the master cleans.
        if os.getpid() == master:
            if server.metrics is not None:
                server.metrics.stop()
            disable_multiprocess()
            shutil.rmtree(metrics_dir, ignore_errors=True)
