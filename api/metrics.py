"""Prometheus metrics of one API process. Each gunicorn worker keeps its own registry, so a
scrape sees the worker that answered it; sum over scrapes or run one worker when exact counts
matter (prometheus_client's multiprocess mode would lift this, at the cost of a shared dir)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


class Metrics:
    """The API's counters, in a registry of their own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chronoq_api_requests", "HTTP requests answered, by route and status.",
            ["method", "endpoint", "status"], registry=self.registry,
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
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
