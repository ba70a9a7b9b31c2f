"""What /api/workflows takes and returns: a workflow to create (its tasks each a job template with
a key, dependencies, a run_if and allow_failure), the workflow as returned, the list's filters."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from common.core import workflow_graph as graph
from common.core.workflow_templates import OPERATORS, has_references

from api.schemas import (
    AwareDateTime,
    CursorField,
    JobTemplateSchema,
    STATUSES,
    Text,
    UtcDateTime,
    _SettingsSchema,
    resolve_delay,
    too_big,
    when_and_meta_errors,
    MAX_DELAY_SECONDS,
)

_RUN_IF = {
    "description": "When the task runs once its dependencies have settled: success (default: every "
                   "dependency succeeded), failure (some dependency failed), always, or a condition on a "
                   "dependency's output {\"path\": \"tasks.<key>.output.<field>…\", \"op\": one of "
                   f"{', '.join(OPERATORS)}, \"value\": …}} (it also needs every dependency to succeed). "
                   "A task that does not run is SKIPPED, and so are the tasks that needed it.",
    "oneOf": [{"type": "string", "enum": list(graph.RUN_IF)}, {"type": "object"}],
}


class WorkflowTaskSchema(JobTemplateSchema):
    """One task: the fields of a job (without a time: the workflow times it) and its place in
    the graph. Its payload may read upstream tasks' results as {{ tasks.<key>.output.<field> }}."""

    key = Text(required=True, validate=validate.Length(min=1, max=64), metadata={
        "description": "The task's name in the workflow: letters, digits, _ and -."})
    name = Text(validate=validate.Length(min=1, max=200), metadata={
        "description": "The task's job name; default <workflow name>.<key>."})
    depends_on = fields.List(fields.String(), load_default=list, metadata={
        "description": "Keys of the tasks that must settle before this one is decided."})
    run_if = fields.Raw(load_default="success", metadata=_RUN_IF)
    allow_failure = fields.Boolean(load_default=False, metadata={
        "description": "The workflow may succeed although this task failed (fail_fast ignores its failure)."})

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _when_and_payload(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        """A payload with references is checked against its type once rendered (when the task
        is released: a payload that is not valid then fails the task); here only its size."""
        if not has_references(data.get("payload")):
            return super()._when_and_payload(data, original, **kwargs)
        big = too_big(data["payload"], self.settings.max_payload_bytes, "CHRONOQ_MAX_PAYLOAD_BYTES")
        if big:
            raise ValidationError({"payload": [big]})
        return None


class WorkflowCreateSchema(_SettingsSchema):
    """A workflow to create. Give exactly one of ``execute_at`` and ``delay_seconds``: the time
    its tasks without dependencies start."""

    #: Whether a time is required (a schedule's workflow template has none: its schedule times it).
    TIMED = True

    name = Text(required=True, validate=validate.Length(min=1, max=200))
    execute_at = AwareDateTime(metadata={"description": "When the first tasks run, with an offset."})
    delay_seconds = fields.Float(validate=validate.Range(min=0, max=MAX_DELAY_SECONDS),
                                 metadata={"description": "Run this many seconds from now (instead of execute_at)."})
    failure_policy = fields.String(load_default="fail_fast", validate=validate.OneOf(graph.POLICIES), metadata={
        "description": "After a task fails (without allow_failure): fail_fast cancels every task that has not "
                       "started, except those with run_if failure or always; continue runs every branch that "
                       "still can."})
    metadata_ = fields.Dict(keys=fields.String(), load_default=dict, data_key="metadata", attribute="meta")
    tasks = fields.List(fields.Nested(WorkflowTaskSchema), required=True, metadata={
        "description": "The tasks, at most CHRONOQ_WORKFLOW_MAX_TASKS."})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The nested task schema reads the same settings as this one.
        self.fields["tasks"].inner.schema._settings = self._settings  # type: ignore[attr-defined]

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if not isinstance(original, dict):
            return
        errors: dict[str, Any] = when_and_meta_errors(data, original, self.settings, timed=self.TIMED)
        raw = original.get("tasks")
        if isinstance(raw, list) and "tasks" in data:
            errors.update(graph.validate(data["tasks"], max_tasks=self.settings.workflow_max_tasks))
        if errors:
            raise ValidationError(errors)

    @post_load
    def _resolve(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return resolve_delay(data)


class WorkflowTaskOutSchema(Schema):
    key = fields.String()
    id = fields.UUID(metadata={"description": "The task's job (GET /api/jobs/{id}, its attempts, its events)."})
    name = fields.String()
    type = fields.String()
    status = fields.String(metadata={"enum": list(STATUSES)})
    depends_on = fields.List(fields.String())
    run_if = fields.Raw(metadata=_RUN_IF)
    allow_failure = fields.Boolean()
    execute_at = UtcDateTime(metadata={"description": "When it is due: the workflow's time, or when it was released."})
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    attempts = fields.Integer()
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "Why it failed, or was skipped or cancelled."})


class WorkflowSchema(Schema):
    """A workflow as returned."""

    id = fields.UUID()
    tenant = fields.String()
    name = fields.String()
    status = fields.String(metadata={"enum": list(graph.WorkflowStatus.ALL)})
    failure_policy = fields.String(metadata={"enum": list(graph.POLICIES)})
    execute_at = UtcDateTime()
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True, metadata={"description": "When its first task started."})
    finished_at = UtcDateTime(allow_none=True)
    metadata_ = fields.Dict(data_key="metadata", attribute="metadata")
    runs = fields.Integer(metadata={"description": "1, plus one per rerun."})
    schedule_id = fields.UUID(allow_none=True, metadata={"description": "The schedule this workflow is an occurrence of."})
    scheduled_for = UtcDateTime(allow_none=True)
    task_counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                              metadata={"description": "Tasks by status (statuses with none left out)."})
    tasks = fields.List(fields.Nested(WorkflowTaskOutSchema), metadata={"description": "In the order given at creation."})


class WorkflowSummarySchema(WorkflowSchema):
    """A workflow in a listing: without its tasks (their counts are there)."""

    class Meta:
        exclude = ("tasks",)


class WorkflowPageSchema(Schema):
    items = fields.List(fields.Nested(WorkflowSummarySchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "Pass as cursor for the next page; null at the end."})


class WorkflowQuerySchema(Schema):
    """Filters and pagination of the workflow list, newest first."""

    status = fields.List(fields.String(validate=validate.OneOf(graph.WorkflowStatus.ALL)),
                         metadata={"description": "Only these statuses (repeat the parameter)."})
    name = Text(metadata={"description": "Only workflows with exactly this name."})
    tenant = Text(metadata={"description": "Only this tenant's workflows (admins; others always see only their own)."})
    schedule_id = fields.UUID(metadata={"description": "Only the occurrences of this schedule."})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = CursorField(metadata={"description": "next_cursor of the previous page."})

