"""GET /api/me: who the caller is, so a client (the dashboard) shows only what its role may do.
The API still checks every request on its own."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from common.core.roles import ROLE_NAMES, Role

from api.auth import principal, requires
from api.context import runtime

blp = Blueprint("me", __name__, url_prefix="/api/me", description="The caller's identity and role.")


class MeSchema(Schema):
    subject = fields.String(metadata={"description": "The key (`key:<prefix>:<name>`) or token subject."})
    tenant = fields.String(metadata={"description": "The caller's tenant."})
    role = fields.String(metadata={"enum": list(ROLE_NAMES)})
    all_tenants = fields.Boolean(metadata={"description": "The caller sees every tenant's data (admins)."})
    auth_enabled = fields.Boolean(metadata={"description": "False when the API runs with CHRONOQ_AUTH=off."})


@blp.route("")
class MeView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, MeSchema)
    def get(self) -> dict[str, Any]:
        """The caller: subject, tenant, role, and whether authentication is on at all."""
        caller = principal()
        return {"subject": caller.subject, "tenant": caller.tenant, "role": caller.role.label,
                "all_tenants": caller.tenant_scope is None, "auth_enabled": runtime().settings.auth_enabled}
