"""Prometheus metrics of the API. Under ``python -m api`` the gunicorn workers share them
through prometheus_client's multiprocess mode (:func:`api.server.serve` makes the directory),
so every scrape, whichever worker answers it, sees the totals of all workers; an app served
in-process (tests, embedding) keeps them in its own registry."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram

from common.infra.metrics import LATENCY_BUCKETS, render


class Metrics:
    """The API's counters, in a registry of their own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chronoq_api_requests", "HTTP requests answered, by route and status.",
            ["method", "endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "chronoq_api_request_duration_seconds",
            "Time from the start of a request's handling to its answer, by method and route pattern.",
            ["method", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.jobs_created = Counter(
            "chronoq_api_jobs_created", "Jobs created, by type.", ["type"], registry=self.registry
        )
        self.direct_dispatches = Counter(
            "chronoq_api_direct_dispatches",
            "Jobs the API dispatched itself because they were due too soon for the scanner, by outcome "
            "(published; unpublished or failed: left SCHEDULED for the scanner).",
            ["outcome"], registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text (of all workers in multiprocess mode) and its content type."""
        return render(self.registry), CONTENT_TYPE_LATEST


def install(app: Flask) -> None:
    """Time and count every request of ``app``. Install before the other ``before_request``
    hooks (authentication), so that a request they answer early is timed too."""
    app.before_request(_start)
    app.after_request(_count)


def _start() -> None:
    g.chronoq_started = time.perf_counter()


def _count(response: Response) -> Response:
    from api.context import runtime  # here: api.context imports this module

    metrics = runtime().metrics
    # The route pattern, not the path: ids in paths would make a label per job.
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
    started = g.get("chronoq_started")
    if started is not None:
        metrics.latency.labels(request.method, endpoint).observe(time.perf_counter() - started)
    return response
