"""Built-in job types for tests and demos: ``noop``, ``sleep`` and ``fail``."""

from __future__ import annotations

from typing import Any

from common.infra.errors import ChronoqError, JobTimeout

from executor_service.context import HandlerContext


class JobFailed(ChronoqError):
    """The job reported a failure."""


def noop(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Do nothing, successfully."""
    return {"ok": True}


def sleep(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Wait ``seconds``; returns early (as a timeout) when the runner abandons the attempt."""
    seconds = float(payload["seconds"])
    if seconds > context.remaining():
        # It cannot finish in time: wait out the timeout, then fail like any timed-out job.
        context.abandoned.wait(context.remaining())
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    if context.abandoned.wait(seconds):
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    return {"slept": seconds}


def fail(payload: dict[str, Any], context: HandlerContext) -> None:
    """Fail every attempt with ``message``."""
    raise JobFailed(str(payload["message"]))
