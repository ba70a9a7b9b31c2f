"""What a handler gets besides its payload, and the error kinds the runner tells apart."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from common.infra.config import Settings
from common.infra.errors import ChronoqError


class PermanentFailure(ChronoqError):
    """The job cannot succeed on any attempt (bad payload, refused host, unknown type)."""


@dataclass
class HandlerContext:
    """One run's context. ``attempt`` numbers the runs of the job (its history rows);
    ``idempotency_key`` (job id and attempt) stays the same when an attempt whose executor died
    is run again, so a downstream service can drop the duplicate."""

    job_id: uuid.UUID
    name: str
    attempt: int
    max_retries: int
    idempotency_key: str
    deadline: float  # time.monotonic() value at which the attempt times out
    timeout_seconds: float
    settings: Settings
    #: Set when the runner gave up waiting (timeout): a handler running on a thread (a plain
    #: function) cannot be killed, but a cooperative one can stop early.
    abandoned: threading.Event = field(default_factory=threading.Event)
    #: The executor's pool of keep-alive HTTP connections (for the ``http`` type).
    http: Any = None
    #: The job's tenant, and the fencing token of the dispatch being run.
    tenant: str = ""
    dispatch_token: int = 0
    #: The tenant's webhook signing secrets in clear, current first (a second one while a
    #: rotation is in progress); ``http`` calls carry a signature made with each.
    signing_secrets: tuple[str, ...] = ()
    #: Header names whose values were stored as secrets: never sent to another origin than the
    #: job's URL (a redirect elsewhere drops them, as it drops Authorization and cookies).
    secret_names: frozenset[str] = frozenset()
    #: With tracing on, the W3C Trace Context (``traceparent``, ``tracestate``) of the
    #: attempt's span: the ``http`` handler sends it to the target; another handler may too.
    trace_context: dict[str, str] | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())
