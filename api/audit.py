"""The audit log: every request that changes something (or tries to, with a credential) leaves
one row: who, which tenant, what, on which object, from where, when, and its HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request

from common.infra import clock

from api.auth import current_principal

log = logging.getLogger(__name__)

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def note(action: str | None, target_type: str | None = None, target_id: Any = None, **detail: Any) -> None:
    """Name what the current request does, for its audit row (``action`` None: not audited)."""
    g.chronoq_audit = (action, target_type, None if target_id is None else str(target_id), detail or None)


def _text(value: str | None, limit: int) -> str | None:
    """``value`` as PostgreSQL can store it: NUL and lone surrogates (which a path may carry,
    e.g. ``/api/jobs/%00``) replaced, cut to ``limit``."""
    if not value:
        return None
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()[:limit]


def _default_action() -> tuple[str, str | None, str | None, None]:
    # A view that forgot to name itself is still recorded, by its route.
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    target = next(iter(request.view_args.values()), None) if request.view_args else None
    return f"{request.method} {rule}", None, target, None


def install(app: Flask) -> None:
    """Record the audit row of each changing request after its answer is made."""
    rt = app.extensions["chronoq"]

    @app.after_request
    def _record(response: Response) -> Response:
        if request.method not in _CHANGES or not request.path.startswith("/api/"):
            return response
        caller = current_principal()
        refused = g.get("chronoq_refused")
        if caller is None and refused is None:
            return response  # no valid credential: logged by the guard, not audited (no flooding)
        action, target_type, target_id, detail = g.get("chronoq_audit") or _default_action()
        if action is None:
            return response
        # A refusal names who was refused; otherwise the caller acted.
        subject, tenant, role = refused if refused is not None else (caller.subject, caller.tenant, caller.role)
        rt.audit.record({
            "at": clock.utcnow(), "tenant": tenant, "subject": _text(subject, 200) or "?",
            "role": role.label if role else None, "action": _text(action, 64) or "?", "target_type": target_type,
            "target_id": _text(target_id, 200), "address": _text(request.remote_addr, 64),
            "outcome": response.status_code, "detail": detail,
        })
        return response
