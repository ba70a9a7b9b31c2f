"""The client's typed results: frozen dataclasses built from the API's JSON.

Times are aware ``datetime`` objects (UTC), ids strings. Each result keeps the JSON it was
built from in ``raw`` (what ``--json`` prints), and fields the API adds later are kept there
too rather than breaking an older client."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, TypeVar

#: Statuses a job does not leave by itself (only a rerun starts it again).
FINISHED = frozenset({"SUCCESS", "FAILED", "CANCELLED", "SKIPPED"})
#: Statuses a workflow does not leave by itself (only a rerun starts it again).
WORKFLOW_FINISHED = frozenset({"SUCCESS", "FAILED", "CANCELLED"})

M = TypeVar("M", bound="Model")


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time of the API (``…+00:00`` or ``…Z``) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class Model:
    """Base of every result: ``from_json`` keeps known fields (times parsed) and the whole JSON
    in ``raw``."""

    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls: type[M], data: Mapping[str, Any]) -> M:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "raw" or f.name not in data:
                continue
            value = data[f.name]
            if "datetime" in str(f.type):
                value = parse_time(value)
            values[f.name] = value
        return cls(raw=dict(data), **values)


@dataclass(frozen=True)
class Job(Model):
    """A job (``GET /api/jobs/{id}``)."""

    id: str = ""
    name: str = ""
    type: str = ""
    status: str = ""
    tenant: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    execute_at: datetime | None = None
    priority: int = 0
    attempts: int = 0
    max_retries: int = 0
    timeout_seconds: float = 0.0
    misfire_grace_seconds: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    output: Any = None
    error: str | None = None
    executor: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    original_execute_at: datetime | None = None
    runs: int = 1
    workflow_id: str | None = None  # the workflow the job is a task of (None: a plain job, or an older API)
    task_key: str | None = None

    @property
    def finished(self) -> bool:
        """SUCCESS, FAILED, CANCELLED or SKIPPED: nothing more happens unless it is rerun."""
        return self.status in FINISHED


@dataclass(frozen=True)
class WorkflowTask(Model):
    """One task of a workflow: its job's state, and how it depends on the others."""

    key: str = ""
    id: str = ""  # the task's job
    name: str = ""
    type: str = ""
    status: str = ""
    depends_on: list[str] = field(default_factory=list)
    run_if: Any = "success"  # "success", "failure", "always" or {"path", "op", "value"}
    allow_failure: bool = False
    execute_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    output: Any = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """SUCCESS, FAILED, CANCELLED or SKIPPED."""
        return self.status in FINISHED


@dataclass(frozen=True)
class Workflow(Model):
    """A workflow (``GET /api/workflows/{id}``); ``tasks`` in the order they were given (empty
    in a list, which has ``task_counts`` instead)."""

    id: str = ""
    tenant: str | None = None
    name: str = ""
    status: str = ""
    failure_policy: str = "fail_fast"
    execute_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    runs: int = 1
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    task_counts: dict[str, int] = field(default_factory=dict)
    tasks: list[WorkflowTask] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Workflow":
        made = super().from_json(data)
        return dataclasses.replace(made, tasks=[WorkflowTask.from_json(task) for task in data.get("tasks") or []],
                                   task_counts=dict(data.get("task_counts") or {}))

    @property
    def finished(self) -> bool:
        """SUCCESS, FAILED or CANCELLED: nothing more happens unless it is rerun."""
        return self.status in WORKFLOW_FINISHED

    def task(self, key: str) -> WorkflowTask:
        """The task named ``key`` (KeyError if none)."""
        for task in self.tasks:
            if task.key == key:
                return task
        raise KeyError(key)


@dataclass(frozen=True)
class WorkflowPage(Model):
    """One page of ``GET /api/workflows``, newest first; pass ``next_cursor`` back for the next."""

    items: list[Workflow] = field(default_factory=list)
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "WorkflowPage":
        return cls(raw=dict(data), items=[Workflow.from_json(item) for item in data.get("items", [])],
                   next_cursor=data.get("next_cursor"))


@dataclass(frozen=True)
class Attempt(Model):
    """One attempt of a job (``GET /api/jobs/{id}/attempts``)."""

    attempt: int = 0
    status: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: str | None = None
    executor: str | None = None


@dataclass(frozen=True)
class JobPage(Model):
    """One page of ``GET /api/jobs``; pass ``next_cursor`` back for the next (None: the last)."""

    items: list[Job] = field(default_factory=list)
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "JobPage":
        return cls(raw=dict(data), items=[Job.from_json(item) for item in data.get("items", [])],
                   next_cursor=data.get("next_cursor"))


@dataclass(frozen=True)
class JobRef(Model):
    """The job a batch item created or found."""

    id: str = ""
    status: str = ""
    execute_at: datetime | None = None


@dataclass(frozen=True)
class BatchItem(Model):
    """The answer for one job of a batch: ``code`` 201 created, 200 an earlier job with the same
    key, 409 the key was used for another job, 422 invalid (``errors`` names each field)."""

    index: int = 0
    code: int = 0
    job: JobRef | None = None
    errors: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BatchItem":
        job = data.get("job")
        return cls(raw=dict(data), index=data.get("index", 0), code=data.get("code", 0),
                   job=JobRef.from_json(job) if job else None, errors=data.get("errors") or {})

    @property
    def ok(self) -> bool:
        return self.code in (200, 201)


@dataclass(frozen=True)
class BatchResult(Model):
    """What ``POST /api/jobs/batch`` did."""

    created: int = 0
    existing: int = 0
    failed: int = 0
    items: list[BatchItem] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BatchResult":
        return cls(raw=dict(data), created=data.get("created", 0), existing=data.get("existing", 0),
                   failed=data.get("failed", 0), items=[BatchItem.from_json(i) for i in data.get("items", [])])


@dataclass(frozen=True)
class Stats(Model):
    """``GET /api/jobs/stats``."""

    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    overdue: int = 0


@dataclass(frozen=True)
class RedriveResult(Model):
    """``POST /api/jobs/rerun``: send the same filter with ``finished_before`` again while ``more``."""

    rerun: int = 0
    matched: int = 0
    more: bool = False
    finished_before: datetime | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Schedule(Model):
    """A recurring schedule (``GET /api/schedules/{id}``; ``on_time`` only there)."""

    id: str = ""
    tenant: str | None = None
    name: str | None = None
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None
    dst_policy: dict[str, str] = field(default_factory=dict)
    jitter_seconds: float = 0.0
    catchup_policy: str = ""
    catchup_limit: int = 0
    catchup_per_second: float = 0.0
    overlap_policy: str = ""
    #: The template of each occurrence: a job's fields, or (``workflow``) a workflow's; the other is None.
    job: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None
    paused: bool = False
    paused_at: datetime | None = None
    next_fire_at: datetime | None = None
    last_occurrence: dict[str, Any] | None = None
    on_time: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class SchedulePage(Model):
    """One page of ``GET /api/schedules``."""

    items: list[Schedule] = field(default_factory=list)
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SchedulePage":
        return cls(raw=dict(data), items=[Schedule.from_json(item) for item in data.get("items", [])],
                   next_cursor=data.get("next_cursor"))


@dataclass(frozen=True)
class FireTime(Model):
    """A fire time of a preview: ``at`` (UTC), ``local`` (ISO 8601 in the schedule's zone) and
    the ``note`` of a daylight-saving or jitter move."""

    at: datetime | None = None
    local: str = ""
    note: str | None = None


@dataclass(frozen=True)
class ApiKey(Model):
    """An API key; ``key`` (the secret) only in the answer that made it."""

    id: str = ""
    prefix: str = ""
    tenant: str = ""
    role: str = ""
    name: str = ""
    created_at: datetime | None = None
    created_by: str | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None


@dataclass(frozen=True)
class Tenant(Model):
    """A tenant and its limits (None: the deployment's default)."""

    name: str = ""
    created_at: datetime | None = None
    max_pending_jobs: int | None = None
    creates_per_second: float | None = None
    max_batch_jobs: int | None = None
    signing_rotated_at: datetime | None = None


@dataclass(frozen=True)
class SigningSecret(Model):
    """The secrets a tenant's ``http`` deliveries are signed with."""

    tenant: str = ""
    current: str = ""
    previous: str | None = None
    rotated_at: datetime | None = None


@dataclass(frozen=True)
class AuditRecord(Model):
    """One audit record: who did what to which target, and the HTTP status it got."""

    id: int = 0
    at: datetime | None = None
    tenant: str | None = None
    subject: str = ""
    role: str | None = None
    action: str = ""
    target_type: str | None = None
    target_id: str | None = None
    address: str | None = None
    outcome: int = 0
    detail: Any = None


@dataclass(frozen=True)
class AuditPage(Model):
    """One page of ``GET /api/audit``, newest first."""

    items: list[AuditRecord] = field(default_factory=list)
    next_cursor: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AuditPage":
        return cls(raw=dict(data), items=[AuditRecord.from_json(item) for item in data.get("items", [])],
                   next_cursor=data.get("next_cursor"))


@dataclass(frozen=True)
class Event(Model):
    """A job's state change from ``GET /api/events`` (``event_id`` is the stream's ``id:``, for
    resuming with ``Last-Event-ID``; ``id`` is the change's own id in its data)."""

    event_id: str | None = None
    id: int | None = None
    job_id: str = ""
    status: str = ""
    previous_status: str | None = None
    at: datetime | None = None
    attempt: int | None = None
    schedule_id: str | None = None
    name: str | None = None
    type: str | None = None
    tenant: str | None = None
