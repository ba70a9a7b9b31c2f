"""What /api/schedules reads and writes: a schedule's definition (when it fires, its DST,
catch-up, overlap and jitter policies, its template: a job or a workflow), the schedule as
returned, previews."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from common.core import firetimes
from common.core.firetimes import Catchup, DstFold, DstGap
from common.core.schedules import timing_of

from api.context import request_now
from api.schemas import AwareDateTime, CursorField, JobTemplateSchema, RedactedPayload, Text, UtcDateTime
from api.workflow_schemas import _RUN_IF, WorkflowCreateSchema

OVERLAP = ("allow", "skip", "queue_one")
#: The two kinds of template; a definition gives exactly one.
TEMPLATES = ("job", "workflow")
WORKFLOW_OVERLAP = "overlap policies apply to job templates; a workflow occurrence always runs"
#: Fire times a preview lists at most.
MAX_PREVIEW = 100


class Whole(fields.Nested):
    """A nested object that is always given whole, also in a partial update (a job template is
    replaced, not merged: its payload is checked against its type)."""

    def _load(self, value: Any, partial: Any = None, **kwargs: Any) -> Any:
        return super()._load(value, partial=False, **kwargs)


class WorkflowTemplateSchema(WorkflowCreateSchema):
    """What each occurrence of a schedule is when it is a workflow: the fields of
    POST /api/workflows without a time (the schedule times each one), checked the same way
    (each task's job fields, the graph: unknown keys, cycles, tasks that can never run,
    CHRONOQ_WORKFLOW_MAX_TASKS)."""

    TIMED = False

    class Meta:
        exclude = ("execute_at", "delay_seconds")


def _known_zone(name: str) -> bool:
    try:
        firetimes.zone(name)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return True


class DstPolicySchema(Schema):
    """What happens to a local time that daylight saving removes or repeats."""

    gap = fields.String(
        load_default=DstGap.SHIFT.value, validate=validate.OneOf([p.value for p in DstGap]),
        metadata={"description": "A local time that does not exist (spring forward): 'shift' runs it at the "
                                 "first valid instant after the gap, 'skip' does not run it."},
    )
    fold = fields.String(
        load_default=DstFold.ONCE.value, validate=validate.OneOf([p.value for p in DstFold]),
        metadata={"description": "A local time that happens twice (fall back): 'once' runs at the first, "
                                 "'twice' at both."},
    )


class ScheduleDefinitionSchema(Schema):
    """A schedule: exactly one of ``cron`` and ``interval_seconds``, and exactly one of
    ``job`` and ``workflow``: what each occurrence is."""

    name = Text(validate=validate.Length(min=1, max=200), allow_none=True)
    cron = Text(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "5 fields (minute hour day month weekday) or 6 with seconds first, as in "
                                 "Quartz: '*/2 * * * * *' is every 2 seconds. Read in `timezone`."},
    )
    interval_seconds = fields.Float(
        validate=validate.Range(min=1, max=366 * 86400),
        metadata={"description": "Fire every this many seconds from start_at (or from 2000-01-01T00:00Z)."},
    )
    timezone = Text(load_default="UTC", validate=lambda name: _known_zone(name),
                    metadata={"description": "IANA zone the cron expression is read in."})
    start_at = AwareDateTime(allow_none=True, metadata={"description": "No fire time before this."})
    end_at = AwareDateTime(allow_none=True, metadata={"description": "No fire time at or after this."})
    dst_policy = fields.Nested(DstPolicySchema, load_default=lambda: DstPolicySchema().load({}))
    jitter_seconds = fields.Float(
        load_default=0.0, validate=validate.Range(min=0, max=3600),
        metadata={"description": "Delay every occurrence by the same offset in [0, jitter_seconds), drawn "
                                 "from the schedule's id: spreads schedules that share a time."},
    )
    catchup_policy = fields.String(
        load_default=Catchup.SKIP.value, validate=validate.OneOf([p.value for p in Catchup]),
        metadata={"description": "Occurrences missed while chronoq was down or the schedule paused: 'skip' "
                                 "none, 'latest' the most recent once, 'all' each (at most catchup_limit)."},
    )
    catchup_limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=1000))
    catchup_per_second = fields.Float(
        load_default=10.0, validate=validate.Range(min=0.01, max=1000),
        metadata={"description": "How fast missed occurrences are run, at most, with catchup_policy 'all'."},
    )
    overlap_policy = fields.String(
        load_default="allow", validate=validate.OneOf(OVERLAP),
        metadata={"description": "An occurrence due while the previous one still runs: 'allow' runs it, 'skip' "
                                 "records it SKIPPED, 'queue_one' runs it once the previous ends (one waits "
                                 "at most; further ones are SKIPPED). Job templates only: with a workflow "
                                 "template it is 'allow'."},
    )
    job = Whole(JobTemplateSchema, allow_none=True,
                metadata={"description": "Each occurrence is a job with these fields (give this or workflow; "
                                         "null counts as not given)."})
    workflow = Whole(WorkflowTemplateSchema, allow_none=True, metadata={
        "description": "Each occurrence is a workflow with these fields: those of POST /api/workflows without "
                       "execute_at and delay_seconds (give this or job; null counts as not given). Its tasks "
                       "without dependencies are due at the occurrence's time; list the occurrences with "
                       "GET /api/workflows?schedule_id=…"})

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _one_template(self, data: dict[str, Any], original: Any, partial: Any = None, **_: Any) -> None:
        """Exactly one of job and workflow (an update may give neither: it keeps its template).
        Presence in the input counts, so an invalid template is not also reported missing."""
        if not isinstance(original, dict):
            return
        given = [name for name in TEMPLATES if original.get(name) is not None]
        if len(given) == 2 or (not given and not partial):
            message = "give exactly one of job and workflow"
            raise ValidationError({name: [message] for name in TEMPLATES})

    @validates_schema(skip_on_field_errors=True)
    def _fires(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        if partial:
            return  # an update is checked once merged with the stored definition
        errors = definition_errors(data, request_now())
        if errors:
            raise ValidationError(errors)

    @post_load
    def _normal(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("cron"):
            try:
                data["cron"] = firetimes.check_cron(data["cron"])
            except ValueError:
                pass  # an update's cron: reported when the merged definition is checked
        return data


def definition_errors(data: dict[str, Any], now: datetime) -> dict[str, list[str]]:
    """What is wrong with a complete schedule definition, by field: not exactly one of cron and
    interval, an invalid cron, an unknown zone, an end before the start, no fire time ever, or an
    overlap policy other than allow with a workflow template."""
    errors: dict[str, list[str]] = {}
    if data.get("workflow") is not None and data.get("overlap_policy", "allow") != "allow":
        errors["overlap_policy"] = [WORKFLOW_OVERLAP]
    cron, interval = data.get("cron"), data.get("interval_seconds")
    if (cron is None) == (interval is None):
        message = "give exactly one of cron and interval_seconds"
        return {**errors, "cron": [message], "interval_seconds": [message]}
    if cron is not None:
        try:
            cron = firetimes.check_cron(cron)
        except ValueError as exc:
            errors["cron"] = [f"{cron!r} {exc}"]
    try:
        firetimes.zone(data.get("timezone", "UTC"))
    except ValueError as exc:
        errors["timezone"] = [str(exc)]
    start, end = data.get("start_at"), data.get("end_at")
    if start is not None and end is not None and end <= start:
        errors["end_at"] = ["must be after start_at"]
    if errors:
        return errors
    definition = draft({**data, "cron": cron})
    if firetimes.next_fire(timing_of(definition), max(now, start or now) - timedelta(microseconds=1)) is None:
        field = "end_at" if end is not None else ("cron" if cron is not None else "interval_seconds")
        errors[field] = ["leaves the schedule without any fire time"
                         + (" (it ends before its first one)" if end is not None else
                            " (the expression matches no date within five years)")]
    return errors


def draft(data: dict[str, Any]) -> SimpleNamespace:
    """A definition as the timing columns of a schedule (``id`` a new one unless given: the
    jitter offset of a schedule not created yet is only an example)."""
    return SimpleNamespace(
        id=data.get("id") or uuid.uuid4(), cron=data.get("cron"), interval_seconds=data.get("interval_seconds"),
        timezone=data.get("timezone", "UTC"), start_at=data.get("start_at"), end_at=data.get("end_at"),
        jitter_seconds=data.get("jitter_seconds") or 0.0, **dst_columns(data),
    )


def dst_columns(data: dict[str, Any]) -> dict[str, str]:
    """The dst_policy object as the schedule's two columns."""
    policy = data.get("dst_policy") or {}
    return {"dst_gap": policy.get("gap", DstGap.SHIFT.value), "dst_fold": policy.get("fold", DstFold.ONCE.value)}


class ScheduleUpdateSchema(ScheduleDefinitionSchema):
    """Fields to change; the others keep their values. ``pending`` says what happens to the
    occurrences already made ahead under the old definition."""

    pending = fields.String(
        load_default="cancel", validate=validate.OneOf(["cancel", "keep"]),
        metadata={"description": "'cancel' (default): occurrences made ahead that have not started are "
                                 "taken back and made again from the new definition; 'keep': they run "
                                 "as made, the new definition applies after them."},
    )


class TemplateSchema(Schema):
    """A schedule's job template as returned (secret values shown as "***")."""

    name = fields.String(allow_none=True)
    type = fields.String()
    payload = RedactedPayload()
    metadata_ = fields.Dict(data_key="metadata", attribute="meta")
    priority = fields.Integer()
    max_retries = fields.Integer()
    timeout_seconds = fields.Float()
    misfire_grace_seconds = fields.Float(allow_none=True)


class TaskTemplateSchema(TemplateSchema):
    """A task of a schedule's workflow template as returned (secret values shown as "***")."""

    key = fields.String()
    depends_on = fields.List(fields.String())
    run_if = fields.Raw(metadata=_RUN_IF)
    allow_failure = fields.Boolean()


class WorkflowTemplateOutSchema(Schema):
    """A schedule's workflow template as returned."""

    name = fields.String()
    failure_policy = fields.String()
    metadata_ = fields.Dict(data_key="metadata", attribute="meta")
    tasks = fields.List(fields.Nested(TaskTemplateSchema))


class OccurrenceSchema(Schema):
    id = fields.UUID(metadata={"description": "The job's id, or the workflow's (see kind)."})
    kind = fields.String(metadata={"enum": ["job", "workflow"],
                                   "description": "What the occurrence is: a job or a workflow."})
    status = fields.String()
    scheduled_for = UtcDateTime()
    execute_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)


class LatenessSchema(Schema):
    p50 = fields.Float(allow_none=True)
    p99 = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)
    measured = fields.Integer(metadata={"description": "Occurrences with a started attempt among them."})


class OnTimeSchema(Schema):
    """How the schedule's last occurrences went."""

    occurrences = fields.Integer(metadata={"description": "Finished occurrences looked at (the last 100 at most)."})
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    lateness_ms = fields.Nested(LatenessSchema, metadata={
        "description": "Start of each one's first attempt after its time, in milliseconds."})


class ScheduleSchema(Schema):
    """A schedule as the API returns it."""

    id = fields.UUID()
    tenant = fields.String()
    name = fields.String(allow_none=True)
    cron = fields.String(allow_none=True)
    interval_seconds = fields.Float(allow_none=True)
    timezone = fields.String()
    start_at = UtcDateTime(allow_none=True)
    end_at = UtcDateTime(allow_none=True)
    dst_policy = fields.Method("_dst", metadata={"description": "{gap: shift|skip, fold: once|twice}"})
    jitter_seconds = fields.Float()
    catchup_policy = fields.String()
    catchup_limit = fields.Integer()
    catchup_per_second = fields.Float()
    overlap_policy = fields.String()
    job = fields.Nested(TemplateSchema, allow_none=True, metadata={
        "description": "The job each occurrence is; null when each is a workflow."})
    workflow = fields.Nested(WorkflowTemplateOutSchema, allow_none=True, metadata={
        "description": "The workflow each occurrence is; null when each is a job."})
    paused = fields.Boolean()
    paused_at = UtcDateTime(allow_none=True)
    next_fire_at = UtcDateTime(allow_none=True, metadata={
        "description": "When the next occurrence runs (after jitter); null when paused or ended."})
    last_occurrence = fields.Nested(OccurrenceSchema, allow_none=True, metadata={
        "description": "The latest occurrence that fell due, with its status."})
    on_time = fields.Nested(OnTimeSchema, metadata={"description": "Only in GET /api/schedules/{id}."})
    created_at = UtcDateTime()
    updated_at = UtcDateTime()

    def _dst(self, obj: Any) -> dict[str, str]:
        return {"gap": obj["dst_gap"], "fold": obj["dst_fold"]}


class SchedulePageSchema(Schema):
    items = fields.List(fields.Nested(ScheduleSchema))
    next_cursor = fields.String(allow_none=True)


class ScheduleQuerySchema(Schema):
    """Filters and pagination of the schedule list, oldest first."""

    paused = fields.Boolean(metadata={"description": "Only paused (true) or active (false) schedules."})
    name = Text(metadata={"description": "Only schedules with exactly this name."})
    tenant = Text(metadata={"description": "Only this tenant's (admins)."})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = CursorField(metadata={"description": "next_cursor of the previous page."})


class PreviewQuerySchema(Schema):
    count = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_PREVIEW))


class FireTimeSchema(Schema):
    at = UtcDateTime(metadata={"description": "When it runs, in UTC."})
    local = fields.Method("_local", metadata={"description": "The same instant in the schedule's zone, "
                                                             "ISO 8601 with its offset."})
    note = fields.String(allow_none=True, metadata={"description": "Why it moved (DST, jitter), if it did."})

    def _local(self, obj: Any) -> str:
        return obj.local.isoformat(timespec="milliseconds")


class PreviewSchema(Schema):
    items = fields.List(fields.Nested(FireTimeSchema))
