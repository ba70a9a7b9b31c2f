"""Authentication and roles for every request.

Each view declares the least role it needs with :func:`requires` (``None``: open to anyone,
like the probes); a view that declares nothing needs ``admin``, so a forgotten declaration
fails closed. The check runs before the request's arguments are parsed: a caller without the
right role learns nothing from validation errors. With CHRONOQ_AUTH=off every request acts as
an admin of CHRONOQ_LOCAL_TENANT."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from flask import Flask, current_app, g, request
from flask_smorest import Blueprint

from common.core import apikeys
from common.core.roles import Role
from common.infra import clock
from common.infra.db import session_scope

from api.context import runtime
from api.errors import http_error
from api.principal import AuthFailed, AuthUnavailable, Forbidden, Principal
from api.tokens import TokenVerifier

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: The security scheme's name in the OpenAPI document.
SCHEME = "bearerAuth"
_OPEN = "open"
#: Endpoints flask-smorest adds itself: the OpenAPI document and its page describe the API, and
#: say nothing about anyone's data.
_DOC_ENDPOINTS = ("api-docs.",)
#: How often a key's ``last_used_at`` is written (at most), per process.
TOUCH_EVERY = 60.0


#: Keys this process verified lately: SHA-256 of the key → (principal, monotonic expiry).
_VERIFIED: dict[str, tuple[Principal, float]] = {}


def forget_keys() -> None:
    """Verify every key again on its next use (one was revoked)."""
    _VERIFIED.clear()


def requires(role: Role | None) -> Callable[[F], F]:
    """Declare the least ``role`` a view needs (None: open), and document it in OpenAPI."""

    def decorate(func: F) -> F:
        if role is None:
            func._chronoq_role = _OPEN  # type: ignore[attr-defined]
            return Blueprint.doc(security=[])(func)  # type: ignore[no-any-return]
        func._chronoq_role = role  # type: ignore[attr-defined]
        return Blueprint.doc(  # type: ignore[no-any-return]
            security=[{SCHEME: []}],
            responses={
                "401": {"description": "No credential, or one that is not valid (or revoked).",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "403": {"description": f"The credential's role is below {role.label}.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        )(func)

    return decorate


def principal() -> Principal:
    """The caller of the current request (set by the guard before the view runs)."""
    return g.chronoq_principal


def current_principal() -> Principal | None:
    """The caller, when the request got that far (None for an open endpoint or a refusal)."""
    return g.get("chronoq_principal")


def _required(app: Flask) -> Role | str | None:
    endpoint = request.endpoint
    if endpoint is None:
        return None  # no such route: the 404 handler answers, with nothing to protect
    if endpoint.startswith(_DOC_ENDPOINTS):
        return _OPEN
    if endpoint == "health.metrics" and not runtime().settings.metrics_auth:
        return _OPEN
    view = app.view_functions[endpoint]
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = "get" if request.method == "HEAD" else request.method.lower()
        view = getattr(view_class, method, None)
        if view is None:
            return None  # a method the view does not have: the 405 handler answers
    return getattr(view, "_chronoq_role", Role.ADMIN)


class Authenticator:
    """Turns a request's ``Authorization`` header into a :class:`Principal`."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.tokens = TokenVerifier(settings) if settings.jwt_issuer else None
        self._touched: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise AuthFailed("authentication required: send 'Authorization: Bearer <API key or token>'")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthFailed("use 'Authorization: Bearer <API key or token>'")
        if apikeys.looks_like_key(credential):
            return self._key(credential)
        if self.tokens is None:
            raise AuthFailed("not an API key (cq_...), and this deployment accepts no JWTs (CHRONOQ_JWT_ISSUER)")
        return self.tokens.verify(credential)

    def _key(self, key: str) -> Principal:
        digest = apikeys.key_hash(key)
        cached = _VERIFIED.get(digest)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        settings = self.settings
        with session_scope(settings) as session:
            row = apikeys.find_key(session, key)
            if row is None:
                raise AuthFailed("unknown or revoked API key")
            found = Principal(subject=f"key:{row.prefix}:{row.name}", tenant=row.tenant,
                              role=Role.parse(row.role), key_id=row.id)
            if self._should_touch(row.id):
                apikeys.touch(session, row.id, now=clock.utcnow())
        if settings.key_cache_seconds > 0:
            _VERIFIED[digest] = (found, time.monotonic() + settings.key_cache_seconds)
        return found

    def _should_touch(self, key_id: uuid.UUID) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -TOUCH_EVERY) < TOUCH_EVERY:
                return False
            self._touched[key_id] = now
            return True


def _refuse(code: int, message: str, **headers: str) -> Any:
    return current_app.extensions["chronoq-api"].handle_http_exception(http_error(code, message, headers=headers))


def _key_hint(header: str | None) -> str:
    """What a log line may say about a credential: a key's public prefix, never its secret."""
    credential = (header or "").partition(" ")[2].strip()
    if apikeys.looks_like_key(credential):
        return f" (key {credential[:15]}…)"
    return " (a token)" if credential else ""


def install(app: Flask) -> None:
    """Check every request's credential and role before its view runs."""
    rt = app.extensions["chronoq"]
    settings = rt.settings
    authenticator = Authenticator(settings)
    if not settings.auth_enabled:
        log.warning("AUTHENTICATION IS OFF (CHRONOQ_AUTH=off): anyone who can reach this API acts as an "
                    "admin of tenant %r", settings.local_tenant)
    anonymous = Principal(subject="anonymous (CHRONOQ_AUTH=off)", tenant=settings.local_tenant, role=Role.ADMIN)

    @app.before_request
    def _guard() -> Any:
        needed = _required(app)
        if needed is None or needed == _OPEN:
            return None
        if not settings.auth_enabled:
            g.chronoq_principal = anonymous
            return None
        address = request.remote_addr or "?"
        verdict = rt.limiter.failures_allowed(address)
        if not verdict.allowed:
            log.warning("refused %s %s from %s: too many failed authentications", request.method, request.path, address)
            return _refuse(429, "too many failed authentications from this address; try again later",
                           **{"Retry-After": str(verdict.retry_after)})
        header = request.headers.get("Authorization")
        try:
            caller = authenticator.authenticate(header)
        except AuthFailed as exc:
            rt.limiter.failed(address)
            log.warning("authentication failed for %s %s from %s%s: %s",
                        request.method, request.path, address, _key_hint(header), exc)
            return _refuse(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="chronoq"'})
        except Forbidden as exc:
            g.chronoq_refused = (exc.subject, exc.tenant, None)
            return _refuse(403, str(exc))
        except AuthUnavailable as exc:
            return _refuse(503, str(exc), **{"Retry-After": "10"})
        g.chronoq_principal = caller
        if caller.role < needed:
            g.chronoq_refused = (caller.subject, caller.tenant, caller.role)
            log.info("refused %s %s to %s: role %s, needs %s", request.method, request.path, caller.subject,
                     caller.role.label, needed.label)
            return _refuse(403, f"this needs the {needed.label} role; the credential has {caller.role.label}")
        return None
