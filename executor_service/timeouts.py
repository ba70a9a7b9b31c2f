"""Make any handler obey its job's timeout."""

from __future__ import annotations

import threading
from typing import Any, Callable

from common.infra.errors import JobTimeout

from executor_service.context import HandlerContext


def run_with_deadline(call: Callable[[], Any], context: HandlerContext) -> Any:
    """Run ``call`` in a helper thread and wait for it until ``context.deadline``.

    On timeout raise :class:`JobTimeout`. Python cannot kill a thread, so the helper is
    abandoned: it is a daemon (it never blocks process exit), ``context.abandoned`` is set so
    a cooperative handler (``sleep``) returns, and whatever it returns later is dropped. http
    and shell also enforce the deadline natively, so their helpers end on their own."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            outcome["error"] = exc

    helper = threading.Thread(target=target, name=f"job-{context.job_id}-{context.attempt}", daemon=True)
    helper.start()
    helper.join(context.remaining())
    if helper.is_alive():
        context.abandoned.set()
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
