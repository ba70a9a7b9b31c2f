"""Schemas of the admin endpoints: API keys, tenants, signing secrets and the audit log."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from common.core.tenancy import check_tenant_name
from common.core.roles import ROLE_NAMES

from api.schemas import AwareDateTime, Text, UtcDateTime


class TenantName(Text):
    """A tenant name: lower-case letters, digits, '.', '_', '-'."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        name = super()._deserialize(value, attr, data, **kwargs)
        try:
            return check_tenant_name(name)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class KeyCreateSchema(Schema):
    """A key to make."""

    tenant = TenantName(required=True, metadata={"description": "Created if it does not exist."})
    role = fields.String(required=True, validate=validate.OneOf(ROLE_NAMES))
    name = Text(required=True, validate=validate.Length(min=1, max=200),
                metadata={"description": "What the key is for (shown in lists and the audit log)."})


class KeySchema(Schema):
    """An API key as listed: never its secret."""

    id = fields.UUID()
    prefix = fields.String(metadata={"description": "The public part: keys start with cq_<prefix>_."})
    tenant = fields.String()
    role = fields.String()
    name = fields.String()
    created_at = UtcDateTime()
    created_by = fields.String(allow_none=True)
    last_used_at = UtcDateTime(allow_none=True, metadata={"description": "Written at most once a minute."})
    revoked_at = UtcDateTime(allow_none=True)


class NewKeySchema(KeySchema):
    key = fields.String(metadata={"description": "The key. Shown this once; only a hash is stored."})


class KeyListSchema(Schema):
    items = fields.List(fields.Nested(KeySchema))


class KeyQuerySchema(Schema):
    tenant = TenantName(metadata={"description": "Only this tenant's keys."})


class TenantLimitsSchema(Schema):
    """A tenant's own limits; null (or absent) means the deployment's default."""

    max_pending_jobs = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=2**31 - 1))
    creates_per_second = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    max_batch_jobs = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=10_000))


class TenantCreateSchema(TenantLimitsSchema):
    name = TenantName(required=True)


class TenantSchema(Schema):
    name = fields.String()
    created_at = UtcDateTime()
    max_pending_jobs = fields.Integer(allow_none=True)
    creates_per_second = fields.Float(allow_none=True)
    max_batch_jobs = fields.Integer(allow_none=True)
    signing_rotated_at = UtcDateTime(allow_none=True)


class TenantListSchema(Schema):
    items = fields.List(fields.Nested(TenantSchema))


class SigningSecretSchema(Schema):
    """The secrets ``http`` deliveries of the tenant are signed with (Chronoq-Signature)."""

    tenant = fields.String()
    current = fields.String(metadata={"description": "Signs every delivery."})
    previous = fields.String(allow_none=True, metadata={
        "description": "Also signs deliveries until dropped, so receivers can switch without losing a call."})
    rotated_at = UtcDateTime(allow_none=True)


class AuditQuerySchema(Schema):
    """Filters of the audit log, newest first."""

    tenant = TenantName()
    subject = Text(metadata={"description": "Exactly this key (key:<prefix>:<name>) or token subject (jwt:<sub>)."})
    action = Text(metadata={"description": "E.g. jobs.create, jobs.cancel, keys.create."})
    target_id = Text(metadata={"description": "A job id, key id or tenant name."})
    after = AwareDateTime(metadata={"description": "Only records at or after this time."})
    before = AwareDateTime(metadata={"description": "Only records before this time."})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.Integer(metadata={"description": "next_cursor of the previous page."})


class AuditRecordSchema(Schema):
    id = fields.Integer()
    at = UtcDateTime()
    tenant = fields.String(allow_none=True)
    subject = fields.String()
    role = fields.String(allow_none=True)
    action = fields.String()
    target_type = fields.String(allow_none=True)
    target_id = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    outcome = fields.Integer(metadata={"description": "The HTTP status of the answer."})
    detail = fields.Raw(allow_none=True)


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditRecordSchema))
    next_cursor = fields.Integer(allow_none=True)
