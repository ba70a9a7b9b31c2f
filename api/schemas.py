"""Request and response schemas. The same classes validate requests and describe them in the
OpenAPI document; rules that depend on the deployment (enabled job types, limits, defaults)
read the settings of the current app, or the ``settings`` given to the schema in unit tests."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from common.infra.clock import ensure_aware, isoformat
from common.infra.config import Settings
from common.core.jobtypes import enabled_types, load_payload
from common.core.secrets import Keyring, has_secrets, redact, seal
from common.core.states import JobStatus

from api.context import current_settings, request_now

MAX_DELAY_SECONDS = 10 * 366 * 86400  # keeps now + delay far from datetime's range
MAX_JSON_DEPTH = 32  # nesting of payload and metadata; deeper risks RecursionError downstream
INT32 = validate.Range(min=-(2**31), max=2**31 - 1)
STATUSES = tuple(s.value for s in JobStatus)


def payload_size(payload: Any) -> int:
    """Bytes of ``payload`` as stored: compact UTF-8 JSON."""
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE_MESSAGE = "must be valid Unicode (a lone surrogate such as \\ud800 cannot be stored)"


def json_value_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` (parsed JSON) cannot be stored and handed on as JSON, or None: nested
    deeper than ``max_depth``, a number that is not finite (1e400, NaN), or a string or key
    with a lone surrogate (not UTF-8). Iterative, so any depth is safe to inspect."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        where = f" (at {path})" if path else ""
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return f"is nested deeper than {max_depth} levels{where}"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    return f"keys {LONE_SURROGATE_MESSAGE}{where}"
                step = f"[{key}]" if isinstance(item, list) else f".{key}" if path else key
                stack.append((child, depth + 1, f"{path}{step}"))
        elif isinstance(item, float) and not math.isfinite(item):
            return f"numbers must be finite (no NaN or Infinity, and within ±1.8e308){where}"
        elif isinstance(item, str) and _LONE_SURROGATE.search(item):
            return f"strings {LONE_SURROGATE_MESSAGE}{where}"
    return None


def _storable_json(value: Any) -> None:
    problem = json_value_problem(value)
    if problem is not None:
        raise ValidationError(problem)


class Text(fields.String):
    """A string without NUL characters, which PostgreSQL cannot store or compare, and without
    lone surrogates, which are not UTF-8 (the driver cannot even send them)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("must not contain NUL characters")
        if _LONE_SURROGATE.search(text):
            raise ValidationError(LONE_SURROGATE_MESSAGE)
        return text


class UtcDateTime(fields.DateTime):
    """Dumps as ISO 8601 in UTC with milliseconds and an explicit offset."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return isoformat(value)


class AwareDateTime(fields.AwareDateTime):
    """An ISO 8601 datetime that must carry an offset; loaded as UTC."""

    # In a query string an unencoded "+05:00" arrives as " 05:00"; put the sign back.
    _LOST_PLUS = re.compile(r" (\d{2}(:?\d{2})?)$")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if isinstance(value, str):
            value = self._LOST_PLUS.sub(r"+\1", value)
        try:
            return ensure_aware(super()._deserialize(value, attr, data, **kwargs))
        except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is past year 9999 in UTC
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


def too_big(value: Any, limit: int, setting: str) -> str | None:
    """Why ``value`` is too large as JSON for ``limit`` bytes (the setting that sets it), or None."""
    size = payload_size(value) if value is not None else 0
    return f"is {size} bytes as JSON; the limit is {limit} ({setting})" if size > limit else None


def when_and_meta_errors(data: dict[str, Any], original: dict[str, Any], settings: Settings, *,
                         timed: bool) -> dict[str, list[str]]:
    """The checks a job create and a workflow create share: exactly one of ``execute_at`` and
    ``delay_seconds`` (when ``timed``; a template has neither), and the metadata's size. Presence
    is read from the input (``original``): an invalid value is reported by its field and must
    not also count as missing."""
    errors: dict[str, list[str]] = {}
    has_at, has_delay = "execute_at" in original, "delay_seconds" in original
    if not timed:
        pass
    elif has_at and has_delay:
        message = "give either execute_at or delay_seconds, not both"
        errors.update(execute_at=[message], delay_seconds=[message])
    elif not has_at and not has_delay:
        errors["execute_at"] = ["Missing data for required field (or give delay_seconds)."]
    big_meta = too_big(data.get("meta"), settings.max_metadata_bytes, "CHRONOQ_MAX_METADATA_BYTES")
    if big_meta:
        errors["metadata"] = [big_meta]
    return errors


def resolve_delay(data: dict[str, Any]) -> dict[str, Any]:
    """``delay_seconds`` in ``data`` turned into ``execute_at`` (from the request's now)."""
    delay = data.pop("delay_seconds", None)
    if delay is not None:
        data["execute_at"] = request_now() + timedelta(seconds=delay)
    return data


class _SettingsSchema(Schema):
    """A schema whose rules read the deployment's settings."""

    def __init__(self, *, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings if self._settings is not None else current_settings()


class JobCreateSchema(_SettingsSchema):
    """A job to create. Give exactly one of ``execute_at`` and ``delay_seconds``."""

    #: Whether a time is required (a schedule's job template has none: its schedule times it).
    TIMED = True

    name = Text(required=True, validate=validate.Length(min=1, max=200))
    type = Text(
        required=True, validate=validate.Length(min=1, max=100),
        metadata={"description": "A job type enabled in this deployment, e.g. http, noop."},
    )
    payload = fields.Dict(
        keys=fields.String(), load_default=dict, validate=_storable_json,
        metadata={"description": "Arguments of the job type (validated per type); at most CHRONOQ_MAX_PAYLOAD_BYTES."},
    )
    execute_at = AwareDateTime(metadata={"description": "When to run, with an offset, e.g. 2030-01-01T14:03:07.250Z."})
    delay_seconds = fields.Float(
        validate=validate.Range(min=0, max=MAX_DELAY_SECONDS),
        metadata={"description": "Run this many seconds from now (instead of execute_at)."},
    )
    max_retries = fields.Integer(
        validate=validate.Range(min=0, max=10),
        metadata={"description": "Retries after a failed attempt; default CHRONOQ_DEFAULT_MAX_RETRIES."},
    )
    timeout_seconds = fields.Float(
        validate=validate.Range(min=0, max=86400, min_inclusive=False),
        metadata={"description": "Longest run of one attempt; default CHRONOQ_DEFAULT_TIMEOUT_SECONDS.",
                  "exclusiveMinimum": True},  # apispec drops min_inclusive=False
    )
    priority = fields.Integer(load_default=0, validate=INT32, metadata={"description": "Higher runs first among jobs due together."})
    misfire_grace_seconds = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "Fail instead of running when this late; null: always run.", "exclusiveMinimum": True},
    )
    metadata_ = fields.Dict(
        keys=fields.String(), load_default=dict, data_key="metadata", attribute="meta", validate=_storable_json,
        metadata={"description": "Free-form labels, returned as given."},
    )

    @validates("type")
    def _known_type(self, value: str, data_key: str) -> None:
        enabled = enabled_types(self.settings)
        if value in enabled:
            return
        if value == "shell":
            raise ValidationError("job type 'shell' is disabled in this deployment (CHRONOQ_SHELL_ENABLED)")
        raise ValidationError(f"unknown job type {value!r}; enabled types: {', '.join(sorted(enabled))}")

    @validates("execute_at")
    def _not_past(self, value: datetime, data_key: str) -> None:
        tolerance = self.settings.past_tolerance_seconds
        earliest = request_now() - timedelta(seconds=tolerance)
        if value < earliest:
            raise ValidationError(
                f"is more than {tolerance:g} s in the past (now is {isoformat(request_now())})"
            )

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _when_and_payload(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if not isinstance(original, dict):
            return  # marshmallow already reported "Invalid input type"
        errors: dict[str, Any] = when_and_meta_errors(data, original, self.settings, timed=self.TIMED)
        payload = data.get("payload")
        if payload is not None:
            big_payload = too_big(payload, self.settings.max_payload_bytes, "CHRONOQ_MAX_PAYLOAD_BYTES")
            if big_payload:
                errors["payload"] = [big_payload]
            elif "type" in data:
                try:
                    load_payload(data["type"], payload, self.settings)
                except ValidationError as exc:
                    errors["payload"] = exc.messages
        if errors:
            raise ValidationError(errors)

    @post_load
    def _resolve(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        resolve_delay(data)
        data.setdefault("max_retries", self.settings.default_max_retries)
        data.setdefault("timeout_seconds", self.settings.default_timeout_seconds)
        if has_secrets(data["type"], data["payload"]):
            # Encrypted before anything else sees it: stored, dispatched and shown only sealed.
            try:
                data["payload"] = seal(data["type"], data["payload"], Keyring.from_settings(self.settings))
            except ValidationError as exc:
                raise ValidationError({"payload": exc.messages}) from None
        return data


class JobTemplateSchema(JobCreateSchema):
    """What each occurrence of a schedule is: the fields of a job, without a time."""

    TIMED = False

    class Meta:
        exclude = ("execute_at", "delay_seconds")


class IdempotencyHeaderSchema(Schema):
    """Headers of a create request."""

    idempotency_key = Text(
        data_key="Idempotency-Key", validate=validate.Length(min=1, max=200),
        metadata={"description": "Repeat a create safely: the same key and body return the first job (200)."},
    )


MAX_BATCH_JOBS = 10_000


class BatchJobSchema(JobCreateSchema):
    """One job of a batch: the fields of a single create, plus its own idempotency key."""

    idempotency_key = Text(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "As the Idempotency-Key header of a single create: the same key and job "
                                 "return the first job (code 200); the same key with another job is a 409."},
    )


class RawItems(fields.List):
    """A JSON array whose items are left as they are, for the view to check one by one (each
    item gets its own answer); documented as an array of ``inner``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return value


class JobBatchSchema(Schema):
    """Jobs to create in one request."""

    jobs = RawItems(
        fields.Nested(BatchJobSchema), required=True,
        metadata={"description": f"At most {MAX_BATCH_JOBS:,} jobs; each is checked like a single create "
                                 "and answered on its own.", "maxItems": MAX_BATCH_JOBS},
    )


class BatchJobRefSchema(Schema):
    """The job an item created or found: see GET /api/jobs/{id} for the rest."""

    id = fields.UUID()
    status = fields.String(metadata={"enum": list(STATUSES)})
    execute_at = UtcDateTime()


class BatchItemSchema(Schema):
    """The answer for one job of a batch, in request order."""

    index = fields.Integer(metadata={"description": "Position of the job in the request."})
    code = fields.Integer(metadata={
        "enum": [200, 201, 409, 422],
        "description": "201 created; 200 an earlier job with this idempotency_key and the same fields; "
                       "409 the idempotency_key was used for another job; 422 invalid, see errors.",
    })
    job = fields.Nested(BatchJobRefSchema, metadata={"description": "With 200 and 201."})
    errors = fields.Dict(
        keys=fields.String(), metadata={"description": "With 409 and 422: each field and what is wrong with it."}
    )


class JobBatchResultSchema(Schema):
    """What a batch did: counts, and one item per job of the request."""

    created = fields.Integer(metadata={"description": "Items with code 201."})
    existing = fields.Integer(metadata={"description": "Items with code 200 (idempotent repeats)."})
    failed = fields.Integer(metadata={"description": "Items with code 409 or 422: nothing stored for them."})
    items = fields.List(fields.Nested(BatchItemSchema))


class StatusList(fields.List):
    """Job statuses, repeated (``?status=A&status=B``) or comma separated (``?status=A,B``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(validate=validate.OneOf(STATUSES)), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ValidationError("must be status names")
        split = [part.strip().upper() for item in items for part in item.split(",")]
        return super()._deserialize([part for part in split if part], attr, data, **kwargs)


class MetadataFilter(fields.List):
    """``key=value`` pairs that a job's metadata must hold (repeat for several: all must)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Text(validate=validate.Length(min=3, max=400)), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[tuple[str, str]]:
        items = super()._deserialize(value if isinstance(value, list) else [value], attr, data, **kwargs)
        pairs = []
        for item in items:
            key, sep, wanted = item.partition("=")
            if not sep or not key:
                raise ValidationError(f"{item!r} is not key=value (e.g. metadata=team=payments)")
            pairs.append((key, wanted))
        return pairs


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the (execute_at, id) of its last job."""

    execute_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        # Full precision: the key must match the stored value exactly, unlike the displayed one.
        raw = f"{ensure_aware(self.execute_at).isoformat()}|{self.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _, job_id = raw.partition("|")
            # OverflowError: a forged time such as 0001-01-01T00:00+05:00 is before year 1 in UTC.
            return cls(ensure_aware(datetime.fromisoformat(at)), uuid.UUID(job_id))
        except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise ValidationError("is not a cursor returned by this API") from exc


class CursorField(fields.String):
    """The opaque ``next_cursor`` of a previous page."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Cursor:
        return Cursor.decode(super()._deserialize(value, attr, data, **kwargs))


class JobQuerySchema(Schema):
    """Filters and pagination of the job list, ordered by (execute_at, id)."""

    status = StatusList(metadata={"description": "Only these statuses (repeat or comma separate)."})
    type = Text(metadata={"description": "Only this job type."})
    name = Text(metadata={"description": "Only jobs with exactly this name."})
    execute_after = AwareDateTime(metadata={"description": "Only jobs due at or after this time."})
    execute_before = AwareDateTime(metadata={"description": "Only jobs due before this time."})
    tenant = Text(metadata={"description": "Only this tenant's jobs (admins; others always see only their own)."})
    schedule_id = fields.UUID(metadata={"description": "Only the occurrences of this schedule."})
    workflow_id = fields.UUID(metadata={"description": "Only the tasks of this workflow."})
    metadata_ = MetadataFilter(data_key="metadata", attribute="metadata", metadata={
        "description": "Only jobs whose metadata has key=value, as text (repeat: all must hold)."})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = CursorField(metadata={"description": "next_cursor of the previous page."})


class RedactedPayload(fields.Dict):
    """A stored payload as shown: secret values as ``"***"``."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        job_type = obj["type"] if isinstance(obj, dict) else obj.type
        return super()._serialize(redact(job_type, value or {}), attr, obj, **kwargs)


class JobSchema(Schema):
    """A job as the API returns it."""

    id = fields.UUID()
    tenant = fields.String(metadata={"description": "The tenant the job belongs to."})
    name = fields.String()
    type = fields.String()
    status = fields.String(metadata={"enum": list(STATUSES)})
    payload = RedactedPayload(metadata={"description": "As given, but secret values are shown as \"***\"."})
    metadata_ = fields.Dict(data_key="metadata", attribute="meta")
    execute_at = UtcDateTime()
    priority = fields.Integer()
    attempts = fields.Integer(metadata={"description": "Attempts started so far."})
    max_retries = fields.Integer()
    timeout_seconds = fields.Float()
    misfire_grace_seconds = fields.Float(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True, metadata={"description": "Start of the latest attempt."})
    finished_at = UtcDateTime(allow_none=True)
    next_attempt_at = UtcDateTime(allow_none=True, metadata={"description": "When a RETRYING job runs again."})
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    executor = fields.String(allow_none=True)
    schedule_id = fields.UUID(allow_none=True, metadata={"description": "The schedule this job is an occurrence of."})
    workflow_id = fields.UUID(allow_none=True, metadata={"description": "The workflow this job is a task of."})
    task_key = fields.String(allow_none=True, metadata={"description": "The task's key in its workflow."})
    scheduled_for = UtcDateTime(allow_none=True, metadata={
        "description": "The occurrence's fire time as its schedule names it (before jitter or catch-up)."})
    original_execute_at = UtcDateTime(allow_none=True, metadata={
        "description": "execute_at before a trigger or an update moved it."})
    runs = fields.Integer(metadata={"description": "How many times the job was run: 1, plus one per rerun."})


class JobPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "Pass as cursor for the next page; null at the end."})


class AttemptSchema(Schema):
    """One attempt of a job."""

    attempt = fields.Integer()
    status = fields.String()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    executor = fields.String(allow_none=True)
    dispatch_token = fields.Integer()


class AttemptListSchema(Schema):
    items = fields.List(fields.Nested(AttemptSchema))


class StatsSchema(Schema):
    """Job counts."""

    total = fields.Integer()
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "Every status, zeros included."})
    by_type = fields.Dict(keys=fields.String(), values=fields.Integer())
    overdue = fields.Integer(metadata={"description": "SCHEDULED jobs whose execute_at has passed."})


class HealthSchema(Schema):
    status = fields.String()
