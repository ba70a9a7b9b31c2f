"""Serving the app with gunicorn, configured from chronoq's settings rather than gunicorn's
command line."""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from common.infra.config import Settings
from common.infra.db import dispose_engines

from api.app import create_app
from api.context import EXTENSION
from api.publish import EXTENSION as PUBLISHER

log = logging.getLogger(__name__)

# Threads per worker: a create spends longer waiting for PostgreSQL (a commit waits for its WAL
# flush) than running Python, so a worker needs several requests in flight to keep its core busy.
THREADS = 8
GRACEFUL_TIMEOUT = 30  # seconds a worker gets after SIGTERM to finish its requests


class StderrLogger(glogging.Logger):
    """gunicorn's logger with the access log on stderr (gunicorn puts ``-`` on stdout)."""

    def _set_handler(self, log: logging.Logger, output: Any, fmt: logging.Formatter, stream: Any = None) -> None:
        super()._set_handler(log, output, fmt, stream=sys.stderr)


def _post_fork(server: Any, worker: Any) -> None:
    # Pooled connections opened before the fork would be shared with the master and the
    # other workers; each worker opens its own.
    dispose_engines()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {}) if app is not None else {}
    runtime = extensions.get(EXTENSION)
    if runtime is not None:
        runtime.close()  # flushes the producer: the last acknowledgements and refusals come in
    publisher = extensions.get(PUBLISHER)
    if publisher is not None:
        publisher.close()  # then the refused dispatches are handed back before the worker goes
    dispose_engines()


class ApiServer(BaseApplication):
    """gunicorn running :func:`api.app.create_app`: ``settings.api_workers`` gthread workers
    with :data:`THREADS` threads each on ``settings.api_host:settings.api_port``."""

    def __init__(self, settings: Settings, app: Flask | None = None) -> None:
        self.settings = settings
        self.app = app
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
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
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Each worker builds its app after the fork, unless one was given (tests, embedding).
        return self.app if self.app is not None else create_app(self.settings)


def serve(settings: Settings) -> None:
    """Run the API until SIGTERM/SIGINT (gunicorn stops the workers gracefully)."""
    log.info(
        "API listening on http://%s:%d with %d workers", settings.api_host, settings.api_port, settings.api_workers
    )
    ApiServer(settings).run()
