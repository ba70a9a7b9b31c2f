"""Built-in job types for tests and demos: ``noop``, ``sleep`` and ``fail``."""

from __future__ import annotations

import asyncio
from typing import Any

from common.infra.errors import ChronoqError

from executor_service.context import HandlerContext


class JobFailed(ChronoqError):
    """The job reported a failure."""


async def noop(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Do nothing, successfully."""
    return {"ok": True}


async def sleep(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Wait ``seconds`` (the runner cancels it at the job's timeout)."""
    seconds = float(payload["seconds"])
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def fail(payload: dict[str, Any], context: HandlerContext) -> None:
    """Fail every attempt with ``message``."""
    raise JobFailed(str(payload["message"]))
