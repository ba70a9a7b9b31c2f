"""The /api/schedules endpoints: create, list, get (with on-time figures), update, delete,
pause, resume and preview recurring schedules.

The scanner makes each schedule's occurrences ahead of time (:mod:`common.core.schedules`); a
change here (create, update, resume) makes the ones due before the scanner's current horizon
at once and dispatches those due too soon for it, as a job create does, so a schedule is on
time from its first occurrence."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from flask import url_for
from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy import select, tuple_

from common.core import schedules, store
from common.core.firetimes import check_cron, fire_times
from common.core.models import Job, Schedule
from common.core.roles import Role
from common.core.windows import dispatch_horizon, needs_direct_dispatch
from common.infra.clock import ensure_aware
from common.infra.db import session_scope

from api.audit import note
from api.auth import principal, requires
from api.context import request_now, runtime
from api.jobs import may_run
from api.parsing import json_blueprint
from api.publish import publisher
from api.schedule_schemas import (
    TEMPLATES,
    PreviewQuerySchema,
    PreviewSchema,
    ScheduleDefinitionSchema,
    SchedulePageSchema,
    ScheduleQuerySchema,
    ScheduleSchema,
    ScheduleUpdateSchema,
    definition_errors,
    draft,
    dst_columns,
)
from api.schemas import Cursor

blp = json_blueprint("schedules", __name__, url_prefix="/api/schedules",
                     description="Recurring schedules: each occurrence is a job, or a workflow.")

#: Definition fields stored in a column of the same name.
_COLUMNS = ("name", "cron", "interval_seconds", "timezone", "start_at", "end_at", "jitter_seconds",
            "catchup_policy", "catchup_limit", "catchup_per_second", "overlap_policy")


def _schedule_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        abort(404, message=f"No schedule '{raw}'")


def _load(session: Any, raw: str, *, lock: bool = False) -> Schedule:
    """The caller's schedule ``raw`` (another tenant's is a 404, as a missing one)."""
    query = select(Schedule).where(Schedule.id == _schedule_id(raw))
    scope = principal().tenant_scope
    if scope is not None:
        query = query.where(Schedule.tenant == scope)
    schedule = session.scalar(query.with_for_update() if lock else query)
    if schedule is None:
        abort(404, message=f"No schedule '{raw}'")
    return schedule


def _refuse_types(template: dict[str, Any]) -> None:
    """403 when the caller may not run a job type of the (stored) template: the job's, or any
    task's of a workflow."""
    flow = schedules.workflow_template(template)
    for task in flow["tasks"] if flow is not None else [template]:
        refused = may_run(task["type"])
        if refused is not None:
            abort(403, message=f"task {task['key']!r}: {refused}" if flow is not None else refused)


def _stored(definition: dict[str, Any]) -> dict[str, Any]:
    """The ``job`` column of a (merged) definition's template: the job template, or the
    workflow template as {"workflow": {...}}."""
    return schedules.stored_template(job=definition.get("job"), workflow=definition.get("workflow"))


def _make_now(session: Any, schedule: Schedule, now: datetime, *, resumed: bool = False) -> list[Any]:
    """Make the occurrences due before the scanner's current horizon (it may have scanned this
    window already) and claim those due too soon for it (jobs, or the root tasks of workflows);
    returns their dispatch messages."""
    settings = runtime().settings
    # On resume every fire time that passed while paused was missed, however recently.
    made = schedules.make_for(session, schedule, now=now, horizon=dispatch_horizon(now, settings.scan_interval_seconds),
                              missed_after=timedelta(0) if resumed else schedules.MISSED_AFTER)
    soon = [job_id for job_id, at in session.execute(select(Job.id, Job.execute_at).where(Job.id.in_(made.job_ids)))
            if needs_direct_dispatch(ensure_aware(at), now, settings.scan_interval_seconds)] if made.job_ids else []
    return store.claim_ids(session, soon, now=now, lease=settings.lease_seconds).messages if soon else []


def _shown(session: Any, schedule: Schedule, *, figures: bool = False,
           last: dict[uuid.UUID, schedules.Occurrence] | None = None) -> dict[str, Any]:
    """The schedule as returned: its columns, its template as ``job`` or ``workflow`` (the
    other null), next fire time (after jitter), last occurrence (from ``last`` when the caller
    read many at once) and, for one schedule, its on-time figures."""
    if last is None:
        last = schedules.last_occurrences(session, [schedule.id], now=request_now())
    shown = {column.key: getattr(schedule, column.key) for column in Schedule.__table__.columns}
    flow = schedules.workflow_template(schedule.job)
    shown.update(job=None if flow is not None else schedule.job, workflow=flow,
                 next_fire_at=_next_run(schedule), last_occurrence=last.get(schedule.id))
    if figures:
        shown["on_time"] = schedules.figures(session, schedule.id)
    return shown


def _next_run(schedule: Schedule) -> datetime | None:
    """When the schedule's next occurrence runs: the earliest unstarted one made, or the next
    not yet made (after jitter)."""
    if schedule.paused:
        return None
    now = request_now()
    found = next(fire_times(schedules.timing_of(schedule), now, limit=1), None)
    return found.at if found else None


@blp.route("")
class SchedulesView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(ScheduleQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, SchedulePageSchema)
    def get(self, limit: int, cursor: Cursor | None = None, paused: bool | None = None, name: str | None = None,
            tenant: str | None = None) -> dict[str, Any]:
        """List the caller's schedules, oldest first, one page at a time, each with its next
        fire time and its last occurrence. Admins see every tenant's (``tenant`` narrows it)."""
        scope = principal().tenant_scope
        query = select(Schedule)
        if scope is not None or tenant is not None:
            query = query.where(Schedule.tenant == (scope if scope is not None else tenant))
        if paused is not None:
            query = query.where(Schedule.paused.is_(paused))
        if name is not None:
            query = query.where(Schedule.name == name)
        if cursor is not None:
            query = query.where(tuple_(Schedule.created_at, Schedule.id) > tuple_(cursor.execute_at, cursor.id))
        with session_scope(runtime().settings) as session:
            rows = list(session.scalars(query.order_by(Schedule.created_at, Schedule.id).limit(limit + 1)))
            page = rows[:limit]
            last = schedules.last_occurrences(session, [s.id for s in page], now=request_now())
            items = [_shown(session, schedule, last=last) for schedule in page]
        more = len(rows) > limit
        return {"items": items,
                "next_cursor": Cursor(page[-1].created_at, page[-1].id).encode() if more else None}

    @requires(Role.WRITER)
    @blp.arguments(ScheduleDefinitionSchema())
    @blp.response(201, ScheduleSchema, headers={"Location": {"description": "URL of the schedule",
                                                             "schema": {"type": "string"}}})
    def post(self, definition: dict[str, Any]) -> Any:
        """Create a schedule.

        Give exactly one of ``cron`` (5 fields, or 6 with seconds first) and
        ``interval_seconds``, and exactly one of ``job`` and ``workflow``: what each occurrence
        is. Each fire time becomes one job, or one workflow (an occurrence, with ``schedule_id``
        and ``scheduled_for``), made ahead by the scanner and run with the precision, retries
        and history of any job or workflow. An invalid cron, an unknown zone, a schedule that
        would never fire or an invalid template (a workflow's is checked like a workflow
        create: its graph too) is a 422 naming the field.
        """
        caller = principal()
        template = _stored(definition)
        _refuse_types(template)
        runtime().quotas.admit(caller.tenant, 1)
        now = request_now()
        schedule = Schedule(
            id=uuid.uuid4(), tenant=caller.tenant, job=template, paused=False, made_until=now,
            created_at=now, updated_at=now, **{name: definition.get(name) for name in _COLUMNS if name in definition},
            **dst_columns(definition),
        )
        with session_scope(runtime().settings) as session:
            session.add(schedule)
            session.flush()
            messages = _make_now(session, schedule, now)
            shown = _shown(session, schedule)
        publisher().publish(messages)
        note("schedules.create", "schedule", schedule.id)
        return shown, 201, {"Location": url_for("schedules.ScheduleView", schedule_id=str(schedule.id))}


@blp.route("/preview")
class NewSchedulePreviewView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(PreviewQuerySchema(), location="query", as_kwargs=True)
    @blp.arguments(ScheduleDefinitionSchema())
    @blp.response(200, PreviewSchema)
    def post(self, definition: dict[str, Any], count: int) -> dict[str, Any]:
        """Preview a definition before creating it: its next ``count`` fire times from now (or
        from ``start_at``), each in UTC and in the schedule's zone, with a note where daylight
        saving or jitter moved or skipped one."""
        timing = schedules.timing_of(draft(definition))
        return {"items": list(fire_times(timing, request_now(), limit=count))}


@blp.route("/<schedule_id>")
class ScheduleView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, ScheduleSchema)
    @blp.alt_response(404, description="No such schedule (or another tenant's).", success=False)
    def get(self, schedule_id: str) -> Any:
        """Get one schedule with its next fire time, its last occurrence and its on-time
        figures: counts by outcome and p50/p99 lateness over its last 100 finished occurrences."""
        with session_scope(runtime().settings) as session:
            return _shown(session, _load(session, schedule_id), figures=True)

    @requires(Role.WRITER)
    @blp.arguments(ScheduleUpdateSchema(partial=True))
    @blp.response(200, ScheduleSchema)
    @blp.alt_response(404, description="No such schedule.", success=False)
    def patch(self, changes: dict[str, Any], schedule_id: str) -> Any:
        """Change a schedule's definition (timing, zone, policies, template).

        A template given (``job`` or ``workflow``) replaces the schedule's whole, whichever
        kind it was. Future occurrences follow the new definition. Those already made ahead
        that have not started are taken back and made again (``pending: "cancel"``, the
        default) or run as made (``"keep"``; the new definition applies after the last of them).
        """
        note("schedules.update", "schedule", schedule_id)
        pending = changes.pop("pending", "cancel")
        now = request_now()
        with session_scope(runtime().settings) as session:
            schedule = _load(session, schedule_id, lock=True)
            merged = {name: getattr(schedule, name) for name in _COLUMNS}
            flow = schedules.workflow_template(schedule.job)
            merged.update(id=schedule.id, job=None if flow is not None else schedule.job, workflow=flow,
                          dst_policy={"gap": schedule.dst_gap, "fold": schedule.dst_fold})
            for name in TEMPLATES:
                if name in changes and changes[name] is None:
                    del changes[name]  # null counts as not given
            if any(name in changes for name in TEMPLATES):
                merged.update(job=None, workflow=None)  # the new template replaces the old, of either kind
            if "cron" in changes and changes["cron"] is not None:
                merged["interval_seconds"] = None
            if "interval_seconds" in changes and changes["interval_seconds"] is not None:
                merged["cron"] = None
            merged.update(changes)
            errors = definition_errors(merged, now)
            if errors:
                abort(422, message="The schedule's new definition is invalid.", errors={"json": errors})
            if any(name in changes for name in TEMPLATES):
                _refuse_types(_stored(merged))
            if pending == "cancel":
                schedules.withdraw(session, schedule, now=now)
            for name in _COLUMNS:
                setattr(schedule, name, merged.get(name))
            if merged.get("cron"):
                schedule.cron = check_cron(merged["cron"])
            schedule.job = _stored(merged)
            for column, value in dst_columns(merged).items():
                setattr(schedule, column, value)
            schedule.updated_at = now
            messages = _make_now(session, schedule, now) if not schedule.paused else []
            shown = _shown(session, schedule)
        publisher().publish(messages)
        return shown

    @requires(Role.WRITER)
    @blp.response(204)
    @blp.alt_response(404, description="No such schedule.", success=False)
    def delete(self, schedule_id: str) -> None:
        """Delete a schedule. Its occurrences made ahead that have not started are taken back;
        those that ran stay as ordinary jobs, with their history (their ``schedule_id`` becomes null)."""
        note("schedules.delete", "schedule", schedule_id)
        now = request_now()
        with session_scope(runtime().settings) as session:
            schedule = _load(session, schedule_id, lock=True)
            schedules.withdraw(session, schedule, now=now)
            session.delete(schedule)


@blp.route("/<schedule_id>/pause")
class PauseView(MethodView):
    @requires(Role.WRITER)
    @blp.response(200, ScheduleSchema)
    @blp.alt_response(404, description="No such schedule.", success=False)
    def post(self, schedule_id: str) -> Any:
        """Pause a schedule: it makes no occurrence until resumed, and the ones made ahead that
        have not started are taken back (a dispatched one is cancelled and cannot start).
        Pausing a paused schedule changes nothing."""
        note("schedules.pause", "schedule", schedule_id)
        with session_scope(runtime().settings) as session:
            schedule = _load(session, schedule_id, lock=True)
            schedules.pause(session, schedule, now=request_now())
            return _shown(session, schedule)


@blp.route("/<schedule_id>/resume")
class ResumeView(MethodView):
    @requires(Role.WRITER)
    @blp.response(200, ScheduleSchema)
    @blp.alt_response(404, description="No such schedule.", success=False)
    def post(self, schedule_id: str) -> Any:
        """Resume a paused schedule. The occurrences it missed while paused follow its
        ``catchup_policy`` (``skip``, the default: none, so no burst); the next ones run at
        their times."""
        note("schedules.resume", "schedule", schedule_id)
        now = request_now()
        messages: list[Any] = []
        with session_scope(runtime().settings) as session:
            schedule = _load(session, schedule_id, lock=True)
            if schedule.paused:
                schedule.paused = False
                schedule.paused_at = None
                messages = _make_now(session, schedule, now, resumed=True)
            shown = _shown(session, schedule)
        publisher().publish(messages)
        return shown


@blp.route("/<schedule_id>/preview")
class SchedulePreviewView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(PreviewQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, PreviewSchema)
    @blp.alt_response(404, description="No such schedule.", success=False)
    def get(self, schedule_id: str, count: int) -> dict[str, Any]:
        """The schedule's next ``count`` fire times from now, in UTC and in its zone, with a
        note where daylight saving or jitter moved or skipped one."""
        with session_scope(runtime().settings) as session:
            schedule = _load(session, schedule_id)
            timing = schedules.timing_of(schedule)
        return {"items": list(fire_times(timing, request_now() - timedelta(microseconds=1), limit=count))}
