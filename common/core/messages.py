"""The messages on chronoq's topics: versioned plain JSON, so any Kafka client can read them.

``encode_*`` turn a message into bytes; ``decode_*`` validate bytes and raise
:class:`MessageError` with the reason (the consumer then sends it to the dead-letter topic)."""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

import orjson
from marshmallow import Schema, ValidationError, fields, validate

from common.infra.clock import ensure_aware, isoformat
from common.infra.errors import MessageError
from common.core.states import REPORTABLE

VERSION = 1
#: The tenant of a dispatch that names none (written before tenants existed); the same as
#: ``common.core.models.DEFAULT_TENANT``, not imported so that reading a message needs no ORM.
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class DispatchMessage:
    """scheduled-jobs-topic: run attempt ``attempt`` of ``job_id`` at ``execute_at``.
    ``type`` and ``payload`` only inform (the payload's secret values are "***"): the executor
    runs the type and payload its start claim reads from the job's row."""

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
    #: The job's tenant: the start claim matches only a row of this tenant.
    tenant: str = DEFAULT_TENANT
    #: Of attempts due at the same instant, an executor starts those of higher priority first.
    priority: int = 0
    #: The W3C Trace Context the message travels with (tracing on): its record's headers, never
    #: its JSON (:data:`NOT_IN_JSON`; common/infra/tracing.py).
    trace: dict[str, str] | None = field(default=None, compare=False)

    @property
    def key(self) -> bytes:
        return str(self.job_id).encode()

    @property
    def idempotency_key(self) -> str:
        """``<job id>:<attempt>``, the same for a re-run of an attempt whose executor died."""
        return f"{self.job_id}:{self.key_attempt or self.attempt}"


@dataclass(frozen=True, slots=True)
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
    #: As :attr:`DispatchMessage.trace`: carried by the record's headers, not in the JSON.
    trace: dict[str, str] | None = field(default=None, compare=False)

    @property
    def key(self) -> bytes:
        return str(self.job_id).encode()


#: Deepest JSON nesting a message may have. The API limits payloads to 32 levels; json.loads and
#: json.dumps recurse per level, so a few thousand levels raise RecursionError (or worse, overflow
#: a small thread stack) in the decoder or, later, wherever the message is re-encoded.
MAX_DEPTH = 64
#: Longest integer literal: int() is quadratic in the digits, and this is Python's default limit
#: (sys.set_int_max_str_digits), which json.dumps applies when the message is re-encoded.
_MAX_INT_DIGITS = 4300
_BIGINT = 2**63 - 1  # dispatch_token is a BIGINT column
_INT = 2**31 - 1  # attempts are INTEGER columns
#: Longest timeout: the executor waits with Thread.join, which raises OverflowError past
#: threading.TIMEOUT_MAX (~292 years); ten years is far beyond any real job.
_MAX_TIMEOUT_SECONDS = 10 * 365 * 86400.0


class _Aware(fields.AwareDateTime):
    """An ISO 8601 datetime with an offset, in UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        try:  # converting e.g. 0001-01-01T00:00+01:00 to UTC leaves datetime's range
            return ensure_aware(super()._deserialize(value, attr, data, **kwargs))
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class _Int(fields.Integer):
    """A JSON integer: not 3.0 or "3" (booleans are refused by marshmallow itself)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class _Float(fields.Float):
    """A finite JSON number: not a numeric string such as "1_0" or "nan"."""

    def _validated(self, value: Any) -> float:
        if not isinstance(value, (int, float)):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class _Text(fields.String):
    """A string without NUL characters, which PostgreSQL text columns cannot store."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("NUL characters are not allowed.")
        return text


class _DispatchSchema(Schema):
    v = _Int(required=True, validate=validate.Equal(VERSION))
    job_id = fields.UUID(required=True)
    token = _Int(required=True, validate=validate.Range(min=1, max=_BIGINT))
    name = _Text(required=True)
    type = _Text(required=True, validate=validate.Length(min=1))
    payload = fields.Dict(required=True)
    execute_at = _Aware(required=True)
    attempt = _Int(required=True, validate=validate.Range(min=1, max=_INT))
    max_retries = _Int(required=True, validate=validate.Range(min=0, max=10))
    timeout_seconds = _Float(
        required=True, validate=validate.Range(min=0, max=_MAX_TIMEOUT_SECONDS, min_inclusive=False)
    )
    misfire_grace_seconds = _Float(load_default=None, allow_none=True)
    key_attempt = _Int(load_default=None, allow_none=True, validate=validate.Range(min=1, max=_INT))
    # Optional: a dispatch written before tenants existed belongs to the default tenant.
    tenant = _Text(load_default=DEFAULT_TENANT, validate=validate.Length(min=1, max=64))
    # Optional: a dispatch written before priorities travelled has the default one.
    priority = _Int(load_default=0, validate=validate.Range(min=-_INT - 1, max=_INT))  # the column's INTEGER


class _UpdateSchema(Schema):
    v = _Int(required=True, validate=validate.Equal(VERSION))
    job_id = fields.UUID(required=True)
    token = _Int(required=True, validate=validate.Range(min=1, max=_BIGINT))
    status = _Text(required=True, validate=validate.OneOf(sorted(s.value for s in REPORTABLE)))
    attempt = _Int(required=True, validate=validate.Range(min=1, max=_INT))
    at = _Aware(required=True)
    executor = _Text(required=True)
    started_at = _Aware(load_default=None, allow_none=True)
    finished_at = _Aware(load_default=None, allow_none=True)
    next_attempt_at = _Aware(load_default=None, allow_none=True)
    output = fields.Raw(load_default=None, allow_none=True)
    error = _Text(load_default=None, allow_none=True)


_DISPATCH = _DispatchSchema()
_UPDATE = _UpdateSchema()


def _to_json(message: DispatchMessage | UpdateMessage) -> bytes:
    # Shallow: payloads and outputs are JSON data already, and asdict's deep copy of them was
    # most of the cost of an update (one is encoded per transition of every job).
    body: dict[str, Any] = {"v": VERSION}
    for name in _field_names(type(message)):
        value = getattr(message, name)
        if isinstance(value, datetime):
            value = isoformat(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        body[name] = value
    try:
        return orjson.dumps(body, default=str)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return json.dumps(body, separators=(",", ":"), default=str).encode()


#: Fields that travel beside a message (as record headers), not in its JSON.
NOT_IN_JSON = frozenset({"trace"})


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclass_fields(cls) if f.name not in NOT_IN_JSON)


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut: a reason must not echo a megabyte of input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# For the depth scan: escapes (so \" does not end a string), then strings (an unterminated one
# runs to the end), then everything but brackets. Each pattern is linear: no backtracking.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*(?:"|\Z)')
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _too_deep(raw: bytes) -> bool:
    """Whether JSON text ``raw`` nests deeper than MAX_DEPTH, judged on the bytes before parsing
    (UTF-8 never uses ASCII byte values inside a multi-byte character)."""
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", raw)).translate(None, _NOT_BRACKET)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return False  # the usual case: too few brackets to matter
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
        if depth < 0:
            return False  # unbalanced: let the parser say where
    return False


def _constant(name: str) -> Any:
    raise MessageError(f"non-finite number {name} (not JSON)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MessageError(f"number {text[:30]} overflows a float")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise MessageError(f"integer of {len(text)} digits (at most {_MAX_INT_DIGITS})")
    return int(text)


def _parse(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates
    except UnicodeDecodeError as exc:
        raise MessageError(f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if _too_deep(raw):
        raise MessageError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:  # a str, not bytes: json.loads would otherwise guess UTF-16/32 or skip a BOM
        body = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:  # not expected after _too_deep; kept as a guard
        raise MessageError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise MessageError(f"not valid JSON: {exc}") from None
    try:  # \ud800 escapes decode to lone surrogates, which no UTF-8 writer (or PostgreSQL) accepts
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape)") from None
    return body


def _load(raw: bytes | None, schema: Schema, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise MessageError("empty message (null value)")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MessageError(f"message is {type(raw).__name__}, not bytes")
    raw = bytes(raw)
    if len(raw) > max_bytes:
        raise MessageError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    body = _parse(raw)
    if not isinstance(body, dict):
        raise MessageError("not a JSON object")
    version = body.get("v")
    if type(version) is not int or version != VERSION:  # type(): True == 1 and 1.0 == 1
        raise MessageError(f"unsupported message version {_short(version)} (this build reads {VERSION})")
    try:
        data = schema.load(body, unknown="exclude")
    except ValidationError as exc:
        raise MessageError(f"invalid fields: {json.dumps(exc.messages, sort_keys=True, default=str)}") from None
    data.pop("v")
    return data


def _decode(raw: bytes | None, schema: Schema, max_bytes: int, cls: type) -> Any:
    try:
        return cls(**_load(raw, schema, max_bytes))
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the last resort: every bad record gets a reason
        raise MessageError(f"undecodable message ({type(exc).__name__}: {_short(str(exc))})") from None


def encode_dispatch(message: DispatchMessage) -> bytes:
    return _to_json(message)


def decode_dispatch(raw: bytes | None, max_bytes: int = 1_000_000) -> DispatchMessage:
    """The message in ``raw``, or :class:`MessageError` with the reason; never another error."""
    return _decode(raw, _DISPATCH, max_bytes, DispatchMessage)


def encode_update(message: UpdateMessage) -> bytes:
    return _to_json(message)


def decode_update(raw: bytes | None, max_bytes: int = 1_000_000) -> UpdateMessage:
    """The message in ``raw``, or :class:`MessageError` with the reason; never another error."""
    return _decode(raw, _UPDATE, max_bytes, UpdateMessage)
