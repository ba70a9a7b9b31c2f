"""Admin endpoints: API keys (/api/keys), tenants and their signing secrets (/api/tenants), and
the audit log (/api/audit). Every one needs the admin role."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import select

from common.core import apikeys
from common.core.models import AuditRecord, Tenant
from common.core.roles import Role
from common.core.secrets import open_text, seal_text
from common.core.tenancy import ensure_tenant, new_signing_secret
from common.infra.db import session_scope

from api.admin_schemas import (
    AuditPageSchema,
    AuditQuerySchema,
    KeyCreateSchema,
    KeyListSchema,
    KeyQuerySchema,
    KeySchema,
    NewKeySchema,
    SigningSecretSchema,
    TenantCreateSchema,
    TenantLimitsSchema,
    TenantListSchema,
    TenantSchema,
)
from api.audit import note
from api.auth import forget_keys, principal, requires
from api.context import request_now, runtime
from api.parsing import JsonParser

keys = Blueprint("keys", __name__, url_prefix="/api/keys", description="API keys (admins).")
tenants = Blueprint("tenants", __name__, url_prefix="/api/tenants", description="Tenants, limits and signing secrets (admins).")
audit = Blueprint("audit", __name__, url_prefix="/api/audit", description="Who changed what (admins).")
for _blp in (keys, tenants, audit):
    _blp.ARGUMENTS_PARSER = JsonParser()


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        abort(404, message=f"No {what} '{raw}'")


@keys.route("")
class KeysView(MethodView):
    @requires(Role.ADMIN)
    @keys.arguments(KeyQuerySchema(), location="query", as_kwargs=True)
    @keys.response(200, KeyListSchema)
    def get(self, tenant: str | None = None) -> dict[str, Any]:
        """List API keys (never their secrets), revoked ones included."""
        with session_scope(runtime().settings) as session:
            return {"items": apikeys.list_keys(session, tenant)}

    @requires(Role.ADMIN)
    @keys.arguments(KeyCreateSchema())
    @keys.response(201, NewKeySchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Make an API key for a tenant (created if new). The answer holds the key, shown only this once."""
        rt = runtime()
        with session_scope(rt.settings) as session:
            made = apikeys.create_key(
                session, tenant=args["tenant"], role=Role.parse(args["role"]), name=args["name"],
                created_by=principal().subject, keyring=rt.keyring, now=request_now(),
            )
            note("keys.create", "key", made.row.id, tenant=args["tenant"], role=args["role"], name=args["name"])
            made.row.key = made.key  # shown this once, never stored
            return made.row


@keys.route("/<key_id>")
class KeyView(MethodView):
    @requires(Role.ADMIN)
    @keys.response(200, KeySchema)
    @keys.alt_response(404, description="No such key.", success=False)
    def delete(self, key_id: str) -> Any:
        """Revoke a key: the next request with it gets 401."""
        note("keys.revoke", "key", key_id)
        with session_scope(runtime().settings) as session:
            row = apikeys.revoke_key(session, _uuid(key_id, "key"), now=request_now())
            if row is None:
                abort(404, message=f"No key '{key_id}'")
        forget_keys()  # this process at once; the others within CHRONOQ_KEY_CACHE_SECONDS
        return row


def _tenant(session: Any, name: str) -> Tenant:
    row = session.get(Tenant, name)
    if row is None:
        abort(404, message=f"No tenant '{name}'")
    return row


@tenants.route("")
class TenantsView(MethodView):
    @requires(Role.ADMIN)
    @tenants.response(200, TenantListSchema)
    def get(self) -> dict[str, Any]:
        """List tenants and their limits (null: the deployment's default)."""
        with session_scope(runtime().settings) as session:
            return {"items": list(session.scalars(select(Tenant).order_by(Tenant.name)))}

    @requires(Role.ADMIN)
    @tenants.arguments(TenantCreateSchema())
    @tenants.response(201, TenantSchema)
    @tenants.alt_response(409, description="The tenant exists.", success=False)
    def post(self, args: dict[str, Any]) -> Any:
        """Create a tenant (with a new signing secret) and, optionally, its limits."""
        rt = runtime()
        name = args.pop("name")
        note("tenants.create", "tenant", name, **args)
        with session_scope(rt.settings) as session:
            if session.get(Tenant, name) is not None:
                abort(409, message=f"Tenant '{name}' exists")
            row = ensure_tenant(session, name, rt.keyring, now=request_now())
            for field, value in args.items():
                setattr(row, field, value)
            return row


@tenants.route("/<name>")
class TenantView(MethodView):
    @requires(Role.ADMIN)
    @tenants.response(200, TenantSchema)
    @tenants.alt_response(404, description="No such tenant.", success=False)
    def get(self, name: str) -> Any:
        """One tenant and its limits."""
        with session_scope(runtime().settings) as session:
            return _tenant(session, name)

    @requires(Role.ADMIN)
    @tenants.arguments(TenantLimitsSchema())
    @tenants.response(200, TenantSchema)
    @tenants.alt_response(404, description="No such tenant.", success=False)
    def patch(self, args: dict[str, Any], name: str) -> Any:
        """Change the tenant's limits (null: back to the default). API processes apply them within a second."""
        rt = runtime()
        note("tenants.update", "tenant", name, **args)
        with session_scope(rt.settings) as session:
            row = _tenant(session, name)
            for field, value in args.items():
                setattr(row, field, value)
        rt.quotas.forget(name)
        return row


def _secrets(row: Tenant) -> dict[str, Any]:
    keyring = runtime().keyring
    previous = open_text(row.previous_signing_secret, keyring) if row.previous_signing_secret else None
    return {"tenant": row.name, "current": open_text(row.signing_secret, keyring), "previous": previous,
            "rotated_at": row.signing_rotated_at}


@tenants.route("/<name>/signing-secret")
class SigningSecretView(MethodView):
    @requires(Role.ADMIN)
    @tenants.response(200, SigningSecretSchema)
    @tenants.alt_response(404, description="No such tenant.", success=False)
    def get(self, name: str) -> Any:
        """The secrets the tenant's http deliveries are signed with, for its receivers."""
        with session_scope(runtime().settings) as session:
            return _secrets(_tenant(session, name))


@tenants.route("/<name>/signing-secret/rotate")
class RotateSigningSecretView(MethodView):
    @requires(Role.ADMIN)
    @tenants.response(200, SigningSecretSchema)
    @tenants.alt_response(404, description="No such tenant.", success=False)
    def post(self, name: str) -> Any:
        """Make a new signing secret. The old one becomes ``previous`` and deliveries carry a
        signature with each (executors pick the change up within a minute) until it is dropped
        with DELETE …/signing-secret/previous."""
        rt = runtime()
        note("tenants.rotate_signing_secret", "tenant", name)
        with session_scope(rt.settings) as session:
            row = _tenant(session, name)
            row.previous_signing_secret = row.signing_secret
            row.signing_secret = seal_text(new_signing_secret(), rt.keyring)
            row.signing_rotated_at = request_now()
            return _secrets(row)


@tenants.route("/<name>/signing-secret/previous")
class PreviousSigningSecretView(MethodView):
    @requires(Role.ADMIN)
    @tenants.response(200, SigningSecretSchema)
    @tenants.alt_response(404, description="No such tenant.", success=False)
    def delete(self, name: str) -> Any:
        """Stop signing with the previous secret (once every receiver has the current one)."""
        note("tenants.drop_previous_signing_secret", "tenant", name)
        with session_scope(runtime().settings) as session:
            row = _tenant(session, name)
            row.previous_signing_secret = None
            return _secrets(row)


@audit.route("")
class AuditView(MethodView):
    @requires(Role.ADMIN)
    @audit.arguments(AuditQuerySchema(), location="query", as_kwargs=True)
    @audit.response(200, AuditPageSchema)
    def get(self, limit: int, cursor: int | None = None, after: Any = None, before: Any = None,
            **equal: Any) -> dict[str, Any]:
        """Audit records, newest first, filtered; pass ``next_cursor`` back as ``cursor``.
        Each API process writes its records every 100 ms, so the last fraction of a second of
        other processes may not be there yet."""
        runtime().audit.flush()
        query = select(AuditRecord)
        for field, value in equal.items():
            query = query.where(getattr(AuditRecord, field) == value)
        if after is not None:
            query = query.where(AuditRecord.at >= after)
        if before is not None:
            query = query.where(AuditRecord.at < before)
        if cursor is not None:
            query = query.where(AuditRecord.id < cursor)
        with session_scope(runtime().settings) as session:
            rows = list(session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": rows, "next_cursor": rows[-1].id if more else None}
