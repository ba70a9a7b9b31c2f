"""Schemas of ``GET /api/events``: the stream's filters and where it resumes, and (as JSON Schema,
for the OpenAPI document) each event it sends."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from api.schemas import STATUSES, StatusList, Text

#: Event ids are PostgreSQL bigints.
_EVENT_ID = validate.Range(min=0, max=2**63 - 1)


class EventQuerySchema(Schema):
    """Filters of the stream; every one given must hold."""

    job_id = fields.UUID(metadata={"description": "Only this job's changes."})
    schedule_id = fields.UUID(metadata={"description": "Only the changes of this schedule's occurrences."})
    status = StatusList(metadata={"description": "Only changes to these statuses (repeat or comma separate)."})
    tenant = Text(metadata={"description": "Only this tenant's changes (admins; others always get only their own)."})
    last_event_id = fields.Integer(validate=_EVENT_ID, metadata={
        "description": "Resume after this event id (the Last-Event-ID header wins when both are given)."})


class EventHeadersSchema(Schema):
    """Headers of the stream request."""

    resume_after = fields.Integer(data_key="Last-Event-ID", validate=_EVENT_ID, metadata={
        "description": "What an EventSource sends when it reconnects: resume after this id."})


_STATUS = {"type": "string", "enum": list(STATUSES)}
_UUID = {"type": "string", "format": "uuid"}

#: One change as the ``data:`` line carries it (JSON).
EVENT_DATA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "job_id", "status", "previous_status", "at", "attempt", "schedule_id", "name", "type",
                 "tenant"],
    "properties": {
        "id": {"type": "integer", "description": "The event's id: unique; deduplicate by it."},
        "job_id": _UUID,
        "status": _STATUS,
        "previous_status": {**_STATUS, "nullable": True, "description": "Null when the job was created."},
        "at": {"type": "string", "format": "date-time", "description": "When the change was written (UTC)."},
        "attempt": {"type": "integer", "description": "The job's attempts after the change."},
        "schedule_id": {**_UUID, "nullable": True},
        "name": {"type": "string"},
        "type": {"type": "string"},
        "tenant": {"type": "string"},
    },
}

#: One server-sent event of the stream (the fields of its lines).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": (
            "The resume point, to send back as Last-Event-ID: every change up to it was sent. Usually "
            "data.id; lower while an earlier change may still arrive.")},
        "event": {"type": "string", "enum": ["job"]},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": EVENT_DATA},
    },
}
