"""The job-type registry: built-ins, ``http``, ``shell`` (when enabled) and user handlers
(``CHRONOQ_HANDLERS``, ``type=module:function``, called as ``function(payload, context)``)."""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

from common.infra.config import Settings
from common.infra.errors import JobTypeError
from common.core.jobtypes import user_handlers

from executor_service.context import HandlerContext
from executor_service.handlers import builtin, http, shell

#: A handler is a coroutine function (run on the executor's event loop) or a plain function
#: (run on one of the executor's handler threads); both take ``(payload, context)``.
Handler = Callable[[dict[str, Any], HandlerContext], Any]

BUILTINS: dict[str, Handler] = {
    "noop": builtin.noop,
    "sleep": builtin.sleep,
    "fail": builtin.fail,
    "http": http.call,
    "shell": shell.run,
}

#: Types whose handler ends by its deadline on its own (``http`` through its client timeout,
#: ``shell`` by killing its process; ``noop`` and ``fail`` return at once), so they need no
#: watchdog timer of the runner's.
NATIVE_TIMEOUT = frozenset({"http", "shell", "noop", "fail"})

_imported: dict[str, Handler] = {}
_lock = threading.Lock()


def import_target(target: str) -> Handler:
    """Import ``package.module:function`` (the function part may be dotted)."""
    with _lock:
        cached = _imported.get(target)
        if cached is not None:
            return cached
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise JobTypeError(f"handler {target!r} is not of the form module:function")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise JobTypeError(f"cannot import handler {target!r}: {exc}") from exc
        if not callable(obj):
            raise JobTypeError(f"handler {target!r} is not callable")
        _imported[target] = obj
        return obj


def resolve(job_type: str, settings: Settings) -> Handler:
    """The handler of ``job_type``; :class:`JobTypeError` when it is unknown or disabled."""
    if job_type == "shell" and not settings.shell_enabled:
        raise JobTypeError("job type 'shell' is disabled (CHRONOQ_SHELL_ENABLED=false)")
    handler = BUILTINS.get(job_type)
    if handler is not None:
        return handler  # built-in names cannot be overridden by a user handler
    target = user_handlers(settings).get(job_type)
    if target is None:
        raise JobTypeError(f"unknown job type {job_type!r}")
    return import_target(target)
