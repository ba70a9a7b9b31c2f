"""Run a handler within its job's timeout, natively: a coroutine handler is cancelled at the
deadline (aiohttp and the subprocess it awaits stop with it); a plain function runs on a
thread of its own and is abandoned at the deadline."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import threading
from typing import Any, Callable

from common.infra.errors import JobTimeout

from executor_service.context import HandlerContext
from executor_service.handlers import Handler


class Threads:
    """Threads for handlers written as plain functions: at most ``size`` at once, each a daemon,
    so one that never returns cannot keep the process alive.

    The others wait their turn in ``order`` (smallest first; the runner gives
    ``(execute_at, -priority)``: the earliest due first and, of those due at the same instant,
    the highest priority), then first come, first served. A freed thread goes straight to the
    first in line, so a newcomer never overtakes one that waits. A handler abandoned at its
    deadline gives its place back (its thread runs on, uncounted)."""

    def __init__(self, size: int) -> None:
        self._free = size
        #: (order, arrival, the future that hands over a place), a heap; cancelled waits stay
        #: in it until they come first, and are then skipped.
        self._waiting: list[tuple[Any, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Handlers waiting for a thread."""
        return sum(1 for _, _, turn in self._waiting if not turn.done())

    async def _acquire(self, order: Any) -> None:
        if self._free:  # a place is free only while nobody waits
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (order, next(self._arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a place as the wait was given up: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    async def run(self, call: Callable[[], Any], name: str, order: Any = ()) -> Any:
        loop = asyncio.get_running_loop()
        await self._acquire(order)
        try:
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
        finally:
            self._release()


async def call_handler(
    handler: Handler, payload: dict[str, Any], context: HandlerContext, threads: Threads, *, native: bool = False,
    order: Any = (),
) -> Any:
    """``handler(payload, context)`` until ``context.deadline``; :class:`JobTimeout` past it.
    A ``native`` handler (a coroutine that enforces the deadline itself) is awaited as it is:
    one timer less per job. Python cannot kill a thread: a plain function still running at the
    deadline is left to finish (``context.abandoned`` is set so a cooperative one returns early)
    and whatever it returns later is dropped. While every handler thread is taken, a plain
    function waits for one in ``order`` (see :class:`Threads`)."""
    if inspect.iscoroutinefunction(handler):
        if native:
            return await handler(payload, context)
        work = handler(payload, context)
    else:
        work = threads.run(
            lambda: handler(payload, context), name=f"job-{context.job_id}-{context.attempt}", order=order,
        )
    try:
        return await asyncio.wait_for(work, context.remaining())
    except asyncio.TimeoutError:
        context.abandoned.set()
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from None
