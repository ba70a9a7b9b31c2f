"""The job-creation schema on its own: no database, no app, the clock frozen."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from marshmallow import ValidationError

from api.schemas import Cursor, JobCreateSchema, JobQuerySchema
from common.infra.config import load_settings

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def schema() -> JobCreateSchema:
    return JobCreateSchema(settings=load_settings({}, max_payload_bytes=1000, past_tolerance_seconds=5))


def body(**changes: object) -> dict:
    base = {"name": "ping", "type": "noop", "payload": {}, "execute_at": "2030-01-01T12:05:00+00:00"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def errors_of(schema: JobCreateSchema, data: dict) -> dict:
    with pytest.raises(ValidationError) as info:
        schema.load(data)
    return info.value.messages


@freeze_time(NOW)
def test_valid_body_is_loaded_in_utc_with_defaults(schema: JobCreateSchema) -> None:
    data = schema.load(body(execute_at="2030-01-01T14:05:00+02:00"))
    assert data["execute_at"] == NOW + timedelta(minutes=5)
    assert data["execute_at"].utcoffset() == timedelta(0)
    assert data["max_retries"] == 3
    assert data["timeout_seconds"] == 300.0
    assert data["priority"] == 0 and data["meta"] == {} and data["misfire_grace_seconds"] is None


@freeze_time(NOW)
def test_delay_seconds_counts_from_now(schema: JobCreateSchema) -> None:
    data = schema.load(body(execute_at=..., delay_seconds=90))
    assert data["execute_at"] == NOW + timedelta(seconds=90)
    assert "delay_seconds" not in data


def test_naive_datetime_is_rejected(schema: JobCreateSchema) -> None:
    assert "execute_at" in errors_of(schema, body(execute_at="2030-01-01T12:05:00"))


@freeze_time(NOW)
def test_past_beyond_tolerance_is_rejected_within_tolerance_accepted(schema: JobCreateSchema) -> None:
    errors = errors_of(schema, body(execute_at="2030-01-01T11:59:54Z"))
    assert "in the past" in errors["execute_at"][0]
    assert schema.load(body(execute_at="2030-01-01T11:59:56Z"))["execute_at"] < NOW


@freeze_time(NOW)
def test_both_or_neither_of_execute_at_and_delay(schema: JobCreateSchema) -> None:
    both = errors_of(schema, body(delay_seconds=5))
    assert set(both) == {"execute_at", "delay_seconds"}
    neither = errors_of(schema, body(execute_at=...))
    assert list(neither) == ["execute_at"]


@freeze_time(NOW)
def test_negative_delay_is_rejected(schema: JobCreateSchema) -> None:
    assert list(errors_of(schema, body(execute_at=..., delay_seconds=-1))) == ["delay_seconds"]


@freeze_time(NOW)
def test_unknown_and_disabled_types_are_rejected(schema: JobCreateSchema) -> None:
    assert "unknown job type 'nope'" in errors_of(schema, body(type="nope"))["type"][0]
    assert "disabled" in errors_of(schema, body(type="shell", payload={"argv": ["true"]}))["type"][0]


@freeze_time(NOW)
def test_http_payload_errors_are_reported_under_payload(schema: JobCreateSchema) -> None:
    errors = errors_of(schema, body(type="http", payload={"method": "POST"}))
    assert errors == {"payload": {"url": ["Missing data for required field."]}}
    errors = errors_of(schema, body(type="http", payload={"url": "ftp://x", "method": "FETCH"}))
    assert set(errors["payload"]) == {"url", "method"}


@freeze_time(NOW)
@pytest.mark.parametrize("value", [-1, 11, "three"])
def test_max_retries_outside_0_to_10_is_rejected(schema: JobCreateSchema, value: object) -> None:
    assert list(errors_of(schema, body(max_retries=value))) == ["max_retries"]


@freeze_time(NOW)
def test_max_retries_bounds_are_accepted(schema: JobCreateSchema) -> None:
    assert schema.load(body(max_retries=0))["max_retries"] == 0
    assert schema.load(body(max_retries=10))["max_retries"] == 10


@freeze_time(NOW)
def test_oversize_payload_is_rejected(schema: JobCreateSchema) -> None:
    errors = errors_of(schema, body(payload={"blob": "x" * 1000}))
    assert "CHRONOQ_MAX_PAYLOAD_BYTES" in errors["payload"][0]


@freeze_time(NOW)
@pytest.mark.parametrize(
    "field, value",
    [("name", ""), ("name", "n" * 201), ("timeout_seconds", 0), ("timeout_seconds", 86401),
     ("misfire_grace_seconds", 0), ("priority", 2**31), ("payload", [1]), ("metadata", "x"), ("surprise", 1)],
)
def test_other_bad_fields_are_named(schema: JobCreateSchema, field: str, value: object) -> None:
    assert field in errors_of(schema, body(**{field: value}))


def test_cursor_round_trips_and_garbage_is_rejected() -> None:
    cursor = Cursor(datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc), uuid.uuid4())
    assert JobQuerySchema().load({"cursor": cursor.encode()})["cursor"] == cursor
    with pytest.raises(ValidationError) as info:
        JobQuerySchema().load({"cursor": "not-a-cursor"})
    assert "cursor" in info.value.messages


def test_status_filter_accepts_comma_lists_and_rejects_unknown_names() -> None:
    assert JobQuerySchema().load({"status": ["scheduled,QUEUED"]})["status"] == ["SCHEDULED", "QUEUED"]
    with pytest.raises(ValidationError) as info:
        JobQuerySchema().load({"status": ["DONE"]})
    assert "status" in info.value.messages


@freeze_time(NOW)
def test_http_host_outside_the_allow_list_is_rejected_at_creation() -> None:
    schema = JobCreateSchema(settings=load_settings({}, http_allowed_hosts=("*.example.com",)))
    errors = errors_of(schema, body(type="http", payload={"url": "http://169.254.169.254/latest"}))
    assert "not allowed" in errors["payload"]["url"][0]
    assert schema.load(body(type="http", payload={"url": "https://hooks.example.com/x"}))["type"] == "http"
