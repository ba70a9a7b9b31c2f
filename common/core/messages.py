"""The messages on chronoq's topics: versioned plain JSON, so any Kafka client can read them.

``encode_*`` turn a message into bytes; ``decode_*`` validate bytes and raise
:class:`MessageError` with the reason (the consumer then sends it to the dead-letter topic)."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from common.infra.clock import ensure_aware, isoformat
from common.infra.errors import MessageError
from common.core.states import REPORTABLE

VERSION = 1


@dataclass(frozen=True)
class DispatchMessage:
    """scheduled-jobs-topic: run attempt ``attempt`` of ``job_id`` at ``execute_at``."""

    job_id: uuid.UUID
    token: int
    name: str
    type: str
    payload: dict[str, Any]
    execute_at: datetime
    attempt: int
    max_retries: int
    timeout_seconds: float
    misfire_grace_seconds: float | None = None
    #: The attempt number in the idempotency key; runs lost to a crash do not advance it.
    key_attempt: int | None = None

    @property
    def key(self) -> bytes:
        return str(self.job_id).encode()

    @property
    def idempotency_key(self) -> str:
        """``<job id>:<attempt>``, the same for a re-run of an attempt whose executor died."""
        return f"{self.job_id}:{self.key_attempt or self.attempt}"


@dataclass(frozen=True)
class UpdateMessage:
    """scheduled-updated-jobs-topic: a transition of one attempt, reported by an executor."""

    job_id: uuid.UUID
    token: int
    status: str
    attempt: int
    at: datetime
    executor: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    output: Any = None
    error: str | None = None

    @property
    def key(self) -> bytes:
        return str(self.job_id).encode()


class _Aware(fields.AwareDateTime):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)


class _DispatchSchema(Schema):
    v = fields.Integer(required=True, validate=validate.Equal(VERSION))
    job_id = fields.UUID(required=True)
    token = fields.Integer(required=True, validate=validate.Range(min=1))
    name = fields.String(required=True)
    type = fields.String(required=True, validate=validate.Length(min=1))
    payload = fields.Dict(required=True)
    execute_at = _Aware(required=True)
    attempt = fields.Integer(required=True, validate=validate.Range(min=1))
    max_retries = fields.Integer(required=True, validate=validate.Range(min=0, max=10))
    timeout_seconds = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    misfire_grace_seconds = fields.Float(load_default=None, allow_none=True)
    key_attempt = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))


class _UpdateSchema(Schema):
    v = fields.Integer(required=True, validate=validate.Equal(VERSION))
    job_id = fields.UUID(required=True)
    token = fields.Integer(required=True, validate=validate.Range(min=1))
    status = fields.String(required=True, validate=validate.OneOf(sorted(s.value for s in REPORTABLE)))
    attempt = fields.Integer(required=True, validate=validate.Range(min=1))
    at = _Aware(required=True)
    executor = fields.String(required=True)
    started_at = _Aware(load_default=None, allow_none=True)
    finished_at = _Aware(load_default=None, allow_none=True)
    next_attempt_at = _Aware(load_default=None, allow_none=True)
    output = fields.Raw(load_default=None, allow_none=True)
    error = fields.String(load_default=None, allow_none=True)


_DISPATCH = _DispatchSchema()
_UPDATE = _UpdateSchema()


def _to_json(message: DispatchMessage | UpdateMessage) -> bytes:
    body: dict[str, Any] = {"v": VERSION}
    for name, value in asdict(message).items():
        if isinstance(value, datetime):
            value = isoformat(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        body[name] = value
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def _load(raw: bytes | None, schema: Schema, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise MessageError("empty message (null value)")
    if len(raw) > max_bytes:
        raise MessageError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MessageError("not a JSON object")
    if body.get("v") != VERSION:
        raise MessageError(f"unsupported message version {body.get('v')!r} (this build reads {VERSION})")
    try:
        data = schema.load(body, unknown="exclude")
    except ValidationError as exc:
        raise MessageError(f"invalid fields: {json.dumps(exc.messages, sort_keys=True)}") from None
    data.pop("v")
    for name, value in data.items():
        if isinstance(value, datetime):
            data[name] = ensure_aware(value)
    return data


def encode_dispatch(message: DispatchMessage) -> bytes:
    return _to_json(message)


def decode_dispatch(raw: bytes | None, max_bytes: int = 1_000_000) -> DispatchMessage:
    return DispatchMessage(**_load(raw, _DISPATCH, max_bytes))


def encode_update(message: UpdateMessage) -> bytes:
    return _to_json(message)


def decode_update(raw: bytes | None, max_bytes: int = 1_000_000) -> UpdateMessage:
    return UpdateMessage(**_load(raw, _UPDATE, max_bytes))


@dataclass(frozen=True)
class DeadLetter:
    """scheduled-jobs-dlq: what could not be processed, or a job that finally failed."""

    reason: str
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    job_id: str | None = None
    original: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Any, reason: str) -> "DeadLetter":
        """The dead letter for a consumed Kafka record that could not be processed."""
        return cls(
            reason=reason,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            job_id=record.key.decode(errors="replace") if record.key is not None else None,
            original=record.value.decode(errors="replace") if record.value is not None else None,
        )

    def encode(self, limit: int = 10_000) -> bytes:
        body = {"v": VERSION, **asdict(self)}
        if body["original"] is not None and len(body["original"]) > limit:
            body["original"] = body["original"][:limit] + "…(truncated)"
        return json.dumps(body, default=str).encode()
