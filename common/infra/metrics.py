"""Serving Prometheus metrics: the one HTTP endpoint of the scanner, executors and result
writer (``/metrics`` and, through :class:`~common.infra.health.HealthServer`, ``/healthz``),
each service on a port of its own so that one machine runs them all; the shared bucket
layouts; and prometheus_client's multiprocess mode for the API's gunicorn workers."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess, values

from common.infra.config import PORT_OFF, Settings

log = logging.getLogger(__name__)

#: Fire lateness, in seconds: fine below a millisecond (precision is the point of chronoq), then
#: coarser up to the minutes of a job dispatched after an outage.
LATENESS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
#: Latency of a database statement, a publish or an HTTP request, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Counts per batch or pass (jobs claimed by one scan, attempts in one claim statement).
COUNT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)

#: A route of the endpoint: answers (status, JSON-able body).
Route = Callable[[], tuple[int, dict[str, Any]]]


def endpoint_port(settings: Settings, service: str) -> int | None:
    """The port of ``service``'s endpoint (``api``, ``scanner``, ``executor``, ``results``): the one
    ``CHRONOQ_HEALTH_PORT`` when set, else the service's own setting; 0 means any free port,
    None no endpoint."""
    if settings.health_port:
        return settings.health_port
    own = {
        "api": settings.api_metrics_port,
        "scanner": settings.scanner_metrics_port,
        "executor": settings.executor_metrics_port,
        "results": settings.results_metrics_port,
    }.get(service, PORT_OFF)
    return None if own == PORT_OFF else own


class MetricsEndpoint:
    """``GET /metrics`` (Prometheus text of ``registry``) and JSON ``routes`` on
    ``host:port``, served by a daemon thread. A port another process holds is not fatal (two
    executors on one machine with the same setting): the endpoint takes any free port and logs
    the one it got; :attr:`port` is the port actually bound."""

    def __init__(self, host: str, port: int, *, routes: dict[str, Route] | None = None,
                 registry: CollectorRegistry = REGISTRY, name: str = "metrics") -> None:
        self.host = host
        self.wanted = port
        self.routes = dict(routes or {})
        self.registry = registry
        self.name = name
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "MetricsEndpoint":
        routes, registry = self.routes, self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server naming
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in routes:
                    status, body = routes[path]()
                    self._answer(status, json.dumps(body).encode(), "application/json")
                else:
                    self._answer(404, b'{"status": "not found"}', "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scraped every few seconds: not worth a line
                pass

        try:
            self._server = ThreadingHTTPServer((self.host, self.wanted), Handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not self.wanted:
                raise
            self._server = ThreadingHTTPServer((self.host, 0), Handler)
            log.warning("%s port %d is taken (another service on this machine?); serving on port %d instead",
                        self.name, self.wanted, self._server.server_address[1])
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- several processes, one scrape (the API's gunicorn workers) ------------------------------

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(path: str) -> None:
    """From now on, metrics made in this process and its children keep their values in files
    under ``path`` that :func:`render` adds up, so a scrape of any worker sees all of them.
    prometheus_client picks the value class when it is imported; a metric made after this call
    uses the shared one. Call it before the workers fork and make their metrics."""
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()


def disable_multiprocess() -> None:
    """Back to values in memory (after the server stopped; tests in one process)."""
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.get_value_class()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text: of every process writing to the multiprocess directory when there
    is one, else of ``registry``."""
    path = multiprocess_dir()
    return generate_latest(registry if path is None else multiprocess_registry(path))


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that, at each collect, adds up the files of every process under ``path``."""
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=path)
    return combined


def process_dead(pid: int) -> None:
    """Forget the live gauges of a worker that exited (its counters keep counting in the totals)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)
