"""The /api/workflows endpoints: create a workflow (its tasks are jobs), list, get, cancel and
rerun it from its failed tasks. Each task's own endpoints are those of jobs
(``GET /api/jobs?workflow_id=…``, ``/api/jobs/{id}/attempts``, events)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from flask_smorest import abort

from common.core import workflows
from common.core.roles import Role
from common.core.windows import needs_direct_dispatch
from common.infra.db import session_scope

from api.audit import note
from api.auth import principal, requires
from api.context import request_now, runtime
from api.create import insert_once, request_hash
from api.jobs import may_run
from api.parsing import json_blueprint
from api.publish import publisher
from api.schemas import Cursor, IdempotencyHeaderSchema
from api.workflow_schemas import WorkflowCreateSchema, WorkflowPageSchema, WorkflowQuerySchema, WorkflowSchema

log = logging.getLogger(__name__)

blp = json_blueprint("workflows", __name__, url_prefix="/api/workflows",
                     description="Workflows: tasks (each a job) with dependencies, conditions and failure policies.")

_NOT_FOUND = "No such workflow (or another tenant's)."


def _id(raw: str) -> uuid.UUID:
    """A path id; one that is not a UUID names no workflow, so it is a 404 like any unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        abort(404, message=f"No workflow with id '{raw}'")
    raise AssertionError("abort raises")


def _location(workflow_id: Any) -> dict[str, str]:
    return {"Location": url_for("workflows.WorkflowView", workflow_id=str(workflow_id))}


def _shown(session: Any, workflow_id: uuid.UUID) -> dict[str, Any]:
    found = workflows.find(session, workflow_id, tenant=principal().tenant_scope)
    if found is None:
        abort(404, message=f"No workflow with id '{workflow_id}'")
    return workflows.read(session, found)


@blp.route("")
class WorkflowsView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(WorkflowQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, WorkflowPageSchema)
    def get(self, limit: int, cursor: Cursor | None = None, status: list[str] | None = None,
            name: str | None = None, tenant: str | None = None, schedule_id: uuid.UUID | None = None) -> Any:
        """List the caller's workflows, newest first, with their tasks counted by status.

        Pass ``next_cursor`` back as ``cursor`` for the next page; it is null on the last one.
        """
        scope = principal().tenant_scope
        where = workflows.WorkflowFilter(tenant=scope if scope is not None else tenant, statuses=tuple(status or ()),
                                         name=name, schedule_id=schedule_id)
        with session_scope(runtime().settings) as session:
            items, more = workflows.list_page(session, where, limit=limit,
                                              after=(cursor.execute_at, cursor.id) if cursor else None)
        return {"items": items, "next_cursor": Cursor(*more).encode() if more else None}

    @requires(Role.WRITER)
    @blp.arguments(IdempotencyHeaderSchema(), location="headers", as_kwargs=True)
    @blp.arguments(WorkflowCreateSchema())
    @blp.response(201, WorkflowSchema, headers={"Location": {"description": "URL of the workflow",
                                                             "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=WorkflowSchema, description="A repeat of an earlier request with the same "
                                                              "Idempotency-Key.")
    @blp.alt_response(422, description="Invalid: the errors name each task's field (unknown dependency, cycle, "
                                       "a task that can never run, a reference to a task not upstream, too many "
                                       "tasks, …).", success=False)
    @blp.alt_response(429, description="Over the tenant's limit of unfinished jobs (each task is a job) or of "
                                       "creates per second.", success=False)
    def post(self, fields: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """Create a workflow.

        Its tasks without dependencies are due at ``execute_at`` (or after ``delay_seconds``);
        each other task waits (WAITING) until its dependencies have settled, and is then due
        at once, or SKIPPED when its ``run_if`` does not hold. Each task is a job: it has its
        own attempts, retries, history and events. With an Idempotency-Key, repeating the same
        request returns the first workflow with 200.
        """
        caller = principal()
        for task in fields["tasks"]:
            refused = may_run(task["type"])
            if refused is not None:
                note("workflows.create", "workflow", None, type=task["type"])
                abort(403, message=f"task {task['key']!r}: {refused}")
        rt = runtime()
        rt.quotas.admit(caller.tenant, len(fields["tasks"]))
        now = request_now()
        body_hash = request_hash(request.get_json()) if idempotency_key else None
        row, jobs = workflows.new_workflow(fields, tenant=caller.tenant, idempotency_key=idempotency_key,
                                           request_hash=body_hash)
        soon = needs_direct_dispatch(fields["execute_at"], now, rt.settings.scan_interval_seconds)
        existing, messages = insert_once(
            rt, key=idempotency_key, body_hash=body_hash,
            find=lambda session: workflows.by_key(session, caller.tenant, idempotency_key),
            insert=lambda session: workflows.add_workflow(session, row, jobs, claim_roots=soon, now=now,
                                                          lease=rt.settings.lease_seconds),
            conflict=lambda earlier: (f"Idempotency-Key {idempotency_key!r} was already used with a different "
                                      f"request body (workflow {earlier}); use a new key for a new workflow"),
        )
        if existing is not None:
            note("workflows.create.repeat", "workflow", existing.id)
            with session_scope(rt.settings) as session:
                return _shown(session, existing.id), 200, _location(existing.id)
        if messages:
            publisher().publish(messages)
        for job in jobs:
            rt.metrics.jobs_created.labels(job["type"]).inc()
        log.info("workflow %s created: %r, %d tasks, due %s", row["id"], row["name"], len(jobs), row["execute_at"])
        note("workflows.create", "workflow", row["id"], tasks=len(jobs))
        with session_scope(rt.settings) as session:
            return _shown(session, row["id"]), 201, _location(row["id"])


@blp.route("/<workflow_id>")
class WorkflowView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, WorkflowSchema)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    def get(self, workflow_id: str) -> Any:
        """Get a workflow with its tasks: each task's key, job id, status, dependencies, run_if,
        times, output and error."""
        with session_scope(runtime().settings) as session:
            return _shown(session, _id(workflow_id))

    @requires(Role.WRITER)
    @blp.response(200, WorkflowSchema)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    @blp.alt_response(409, description="The workflow has already ended (the answer names its status).", success=False)
    def delete(self, workflow_id: str) -> Any:
        """Cancel a RUNNING workflow.

        The workflow is CANCELLED at once, and so is every task that has not started (none of
        them starts after the answer); tasks already running finish, and nothing runs after them.
        """
        note("workflows.cancel", "workflow", workflow_id)
        return _steer(workflow_id, workflows.cancel, "cancelled", ("RUNNING",))


@blp.route("/<workflow_id>/rerun")
class WorkflowRerunView(MethodView):
    @requires(Role.WRITER)
    @blp.response(200, WorkflowSchema)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    @blp.alt_response(409, description="The workflow is RUNNING or succeeded (the answer names its status).",
                      success=False)
    def post(self, workflow_id: str) -> Any:
        """Run a FAILED or CANCELLED workflow again from where it failed.

        Its FAILED, CANCELLED and SKIPPED tasks run again (each a new run of its job, its
        history kept); SUCCESS tasks keep their results, which the tasks run again read. The
        tasks whose dependencies all succeeded are due at once; the others wait for them.
        """
        note("workflows.rerun", "workflow", workflow_id)
        uid, rt = _id(workflow_id), runtime()
        with session_scope(rt.settings) as session:
            found = workflows.find(session, uid, tenant=principal().tenant_scope)
            count = len(found.graph["tasks"]) if found is not None else 0
        rt.quotas.admit(principal().tenant, count)
        return _steer(workflow_id, workflows.rerun, "rerun", ("FAILED", "CANCELLED"))


def _steer(raw_id: str, change: Any, action: str, allowed: tuple[str, ...]) -> Any:
    """Lock the workflow, apply ``change``, dispatch the tasks it released; 404 or 409 naming
    the status that refused it."""
    uid, rt, now = _id(raw_id), runtime(), request_now()
    with session_scope(rt.settings) as session:
        found = workflows.find(session, uid, tenant=principal().tenant_scope, lock=True)
        if found is None:
            abort(404, message=f"No workflow with id '{uid}'")
        outcome = change(session, found, now=now)
        if outcome.refused is not None:
            reason = f"is {outcome.refused}; only a workflow that is {' or '.join(allowed)} can be {action}"
            abort(409, message=f"Workflow '{uid}' {reason}", errors={"status": [reason]})
        messages = workflows.claim_released(session, now=now, lease=rt.settings.lease_seconds)
    if messages:
        publisher().publish(messages)
    with session_scope(rt.settings) as session:
        return _shown(session, uid)
