"""The job types and the shape of their payloads. The API validates a payload with these
schemas before storing a job; the executor loads it with the same schemas before running it."""

from __future__ import annotations

import fnmatch
import functools
from typing import Any
from urllib.parse import urlsplit

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from common.infra.config import Settings

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class HttpPayload(Schema):
    """``http``: call ``url``; a status outside ``expect_status`` (default any 2xx) fails."""

    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    method = fields.String(load_default="POST", validate=validate.OneOf(HTTP_METHODS))
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    json = fields.Raw(load_default=None, allow_none=True)
    body = fields.String(load_default=None, allow_none=True)
    expect_status = fields.List(
        fields.Integer(validate=validate.Range(100, 599)), load_default=None, allow_none=True
    )

    @validates_schema
    def _one_body(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("json") is not None and data.get("body") is not None:
            raise ValidationError("give either 'json' or 'body', not both", "body")


class ShellPayload(Schema):
    """``shell``: run ``argv`` (never through a shell string); a non-zero exit fails."""

    argv = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    cwd = fields.String(load_default=None, allow_none=True)
    env = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class SleepPayload(Schema):
    """``sleep``: wait ``seconds`` (for tests and demos; obeys the timeout)."""

    seconds = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=86400))


class FailPayload(Schema):
    """``fail``: fail every attempt with ``message`` (for tests and demos)."""

    message = fields.String(load_default="failed on purpose")


class AnyPayload(Schema):
    """``noop`` and user handlers: any JSON object."""

    class Meta:
        unknown = "include"


BUILTIN_SCHEMAS: dict[str, type[Schema]] = {
    "http": HttpPayload,
    "shell": ShellPayload,
    "noop": AnyPayload,
    "sleep": SleepPayload,
    "fail": FailPayload,
}


def user_handlers(settings: Settings) -> dict[str, str]:
    """``CHRONOQ_HANDLERS`` as {type: "module:function"}."""
    result = {}
    for item in settings.handlers:
        name, _, target = item.partition("=")
        if name.strip() and target.strip():
            result[name.strip()] = target.strip()
    return result


def enabled_types(settings: Settings) -> set[str]:
    """The job types this deployment accepts."""
    types = set(BUILTIN_SCHEMAS) | set(user_handlers(settings))
    if not settings.shell_enabled:
        types.discard("shell")
    return types


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (fnmatch, case-insensitive); no patterns
    means any host."""
    if not patterns:
        return True
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)


@functools.cache
def _schema(cls: type[Schema]) -> Schema:
    # One instance per type: building a schema costs more than loading a small payload with it,
    # and a schema's load keeps no state between calls.
    return cls()


def load_payload(job_type: str, payload: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Validate and fill defaults of ``payload`` for ``job_type``; raises marshmallow's
    ``ValidationError`` naming the field. Types without a schema accept any object. With
    ``settings``, an ``http`` URL must also name an allowed host (CHRONOQ_HTTP_ALLOWED_HOSTS)."""
    cls = BUILTIN_SCHEMAS.get(job_type, AnyPayload)
    data = _schema(cls).load(payload, unknown="include" if cls is AnyPayload else "raise")
    if job_type == "http" and settings is not None and settings.http_allowed_hosts:
        host = urlsplit(data["url"]).hostname or ""
        if not host_allowed(host, settings.http_allowed_hosts):
            raise ValidationError({"url": [f"host {host!r} is not allowed (CHRONOQ_HTTP_ALLOWED_HOSTS)"]})
    return data
