"""Run a handler within its job's timeout, natively: a coroutine handler is cancelled at the
deadline (aiohttp and the subprocess it awaits stop with it); a plain function runs on a
thread of its own and is abandoned at the deadline."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable

from common.infra.errors import JobTimeout

from executor_service.context import HandlerContext
from executor_service.handlers import Handler


class Threads:
    """Threads for handlers written as plain functions: at most ``size`` at once (the others
    wait their turn), each a daemon, so one that never returns cannot keep the process alive."""

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)

    async def run(self, call: Callable[[], Any], name: str) -> Any:
        loop = asyncio.get_running_loop()
        async with self._slots:
            done: asyncio.Future[Any] = loop.create_future()

            def settle(value: Any, error: BaseException | None) -> None:
                if done.cancelled():
                    return  # abandoned at its deadline; the result is dropped
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(value)

            def target() -> None:
                try:
                    value, error = call(), None
                except BaseException as exc:  # handed to the waiting coroutine, which re-raises it
                    value, error = None, exc
                try:
                    loop.call_soon_threadsafe(settle, value, error)
                except RuntimeError:  # the loop closed meanwhile (the executor stopped)
                    pass

            threading.Thread(target=target, name=name, daemon=True).start()
            return await done


async def call_handler(
    handler: Handler, payload: dict[str, Any], context: HandlerContext, threads: Threads, *, native: bool = False,
) -> Any:
    """``handler(payload, context)`` until ``context.deadline``; :class:`JobTimeout` past it.
    A ``native`` handler (a coroutine that enforces the deadline itself) is awaited as it is:
    one timer less per job. Python cannot kill a thread: a plain function still running at the
    deadline is left to finish (``context.abandoned`` is set so a cooperative one returns early)
    and whatever it returns later is dropped."""
    if inspect.iscoroutinefunction(handler):
        if native:
            return await handler(payload, context)
        work = handler(payload, context)
    else:
        work = threads.run(lambda: handler(payload, context), name=f"job-{context.job_id}-{context.attempt}")
    try:
        return await asyncio.wait_for(work, context.remaining())
    except asyncio.TimeoutError:
        context.abandoned.set()
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from None
