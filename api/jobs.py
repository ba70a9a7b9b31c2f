"""The /api/jobs endpoints."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify, request, url_for
from flask.views import MethodView
from flask_smorest import abort

from common.infra.db import session_scope
from common.infra.errors import JobNotFound
from common.core.roles import Role
from common.core import workflows
from common.core.store import cancel
from common.core.states import JobStatus

from api import queries
from api.audit import note
from api.auth import principal, requires
from api.context import request_now, runtime
from api.create import create_batch, create_job, request_hash
from api.errors import JobNotCancellable
from api.parsing import json_blueprint
from api.publish import publisher
from api.schemas import (
    AttemptListSchema,
    Cursor,
    MAX_BATCH_JOBS,
    IdempotencyHeaderSchema,
    JobBatchResultSchema,
    JobBatchSchema,
    JobCreateSchema,
    JobPageSchema,
    JobQuerySchema,
    JobSchema,
    StatsSchema,
)

blp = json_blueprint("jobs", __name__, url_prefix="/api/jobs", description="Create, list, inspect and cancel jobs.")


def job_id_of(raw: str) -> uuid.UUID:
    """A path id; one that is not a UUID names no job, so it is a 404 like any unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise JobNotFound(raw) from None


def _location(job_id: uuid.UUID) -> dict[str, str]:
    return {"Location": url_for("jobs.JobView", job_id=str(job_id))}


def may_run(job_type: str) -> str | None:
    """Why the caller may not create a job of ``job_type`` (None: it may). ``shell`` runs
    programs on the executors' hosts: admins only."""
    if job_type == "shell" and principal().role < Role.ADMIN:
        return "only admins may create shell jobs"
    return None


@blp.route("")
class JobsView(MethodView):
    # Schema instances, not classes: webargs would build a new schema for every request.
    @requires(Role.VIEWER)
    @blp.arguments(JobQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, JobPageSchema)
    def get(self, limit: int, cursor: Cursor | None = None, status: list[str] | None = None,
            tenant: str | None = None, **where: Any) -> dict[str, Any]:
        """List the caller's jobs in execute_at order, filtered, one page at a time.

        Pass ``next_cursor`` back as ``cursor`` for the next page; it is null on the last one.
        Admins see every tenant's jobs (``tenant`` narrows the list); others only their own.
        """
        scope = principal().tenant_scope
        where["metadata"] = tuple(where.get("metadata") or ())
        filters = queries.JobFilter(tenant=scope if scope is not None else tenant, statuses=tuple(status or ()), **where)
        with session_scope(runtime().settings) as session:
            items, next_cursor = queries.list_jobs(session, filters, limit=limit, after=cursor)
        return {"items": items, "next_cursor": next_cursor.encode() if next_cursor else None}

    @requires(Role.WRITER)
    @blp.arguments(IdempotencyHeaderSchema(), location="headers", as_kwargs=True)
    @blp.arguments(JobCreateSchema())
    @blp.response(201, JobSchema, headers={"Location": {"description": "URL of the job", "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=JobSchema, description="A repeat of an earlier request with the same Idempotency-Key.")
    def post(self, fields: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """Create a job.

        Give exactly one of execute_at (with an offset) and delay_seconds. A job due before the
        scanner's next pass is stored QUEUED and published at once, without waiting for Kafka's
        acknowledgement; if Kafka is unreachable or does not acknowledge it, it goes back to
        SCHEDULED and the scanner dispatches it. With an Idempotency-Key, repeating the same
        request returns the first job with 200; the same key with another body is a 422.
        """
        caller = principal()
        refused = may_run(fields["type"])
        if refused is not None:
            note("jobs.create", "job", None, type=fields["type"])
            abort(403, message=refused)
        rt = runtime()
        rt.quotas.admit(caller.tenant, 1)
        body_hash = request_hash(request.get_json()) if idempotency_key else None
        result = create_job(rt, fields, tenant=caller.tenant, now=request_now(), idempotency_key=idempotency_key,
                            body_hash=body_hash)
        note("jobs.create" if result.new else "jobs.create.repeat", "job", result.id)
        return result.job, 201 if result.new else 200, _location(result.id)


@blp.route("/batch")
class JobBatchView(MethodView):
    @requires(Role.WRITER)
    @blp.arguments(JobBatchSchema())
    @blp.response(200, JobBatchResultSchema)
    @blp.alt_response(413, description=f"More than {MAX_BATCH_JOBS:,} jobs (or a body over "
                                        "CHRONOQ_MAX_REQUEST_BYTES).", success=False)
    def post(self, args: dict[str, Any]) -> Any:
        """Create up to 10,000 jobs in one request.

        Each job has the fields of a single create and an optional ``idempotency_key`` of its
        own, and is checked on its own: the answer (200 whenever the request itself is
        well-formed) has one item per job, in request order, with a code: 201 created, 200 an
        earlier job with the same key and fields, 409 the key was used for another job, 422
        invalid (``errors`` names each field). The jobs that pass are stored in one
        transaction; those due before the scanner's next pass are dispatched at once (QUEUED),
        or stay SCHEDULED for the scanner if Kafka does not take them.
        """
        jobs = args["jobs"]
        if len(jobs) > MAX_BATCH_JOBS:
            abort(413, message=f"At most {MAX_BATCH_JOBS:,} jobs per request.",
                  errors={"json": {"jobs": [f"has {len(jobs):,} jobs; send at most {MAX_BATCH_JOBS:,} per request"]}})
        rt, caller = runtime(), principal()
        note("jobs.batch", "batch", None, jobs=len(jobs))
        rt.quotas.admit(caller.tenant, len(jobs))
        # Built ready to send: dumping 10,000 items through the schema (which documents them)
        # would cost more than storing them.
        result = create_batch(rt, jobs, tenant=caller.tenant, now=request_now(), may_run=may_run)
        note("jobs.batch", "batch", None, jobs=len(jobs), created=result["created"], failed=result["failed"])
        return jsonify(result)


@blp.route("/stats")
class JobStatsView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, StatsSchema)
    def get(self) -> dict[str, Any]:
        """Count the caller's jobs (an admin's: every tenant's) by status and type, and the
        SCHEDULED jobs already overdue."""
        with session_scope(runtime().settings) as session:
            return queries.job_stats(session, now=request_now(), tenant=principal().tenant_scope)


@blp.route("/<job_id>")
class JobView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, JobSchema)
    @blp.alt_response(404, description="No such job (or another tenant's).", success=False)
    def get(self, job_id: str) -> Any:
        """Get one job."""
        with session_scope(runtime().settings) as session:
            return queries.get_job(session, job_id_of(job_id), principal().tenant_scope)

    @requires(Role.WRITER)
    @blp.response(200, JobSchema)
    @blp.alt_response(404, description="No such job.", success=False)
    @blp.alt_response(409, description="The job is running or finished (or already cancelled).", success=False)
    def delete(self, job_id: str) -> Any:
        """Cancel a job that has not started its current attempt.

        Answers 200 with the CANCELLED job. Once the answer is sent the job does not start, even
        if an executor already holds it. A RUNNING or finished job is a 409 naming its status;
        so is a job that is already CANCELLED (a repeated DELETE is told it was cancelled
        before, rather than silently succeeding).
        """
        note("jobs.cancel", "job", job_id)
        uid = job_id_of(job_id)
        scope = principal().tenant_scope
        rt, now = runtime(), request_now()
        with session_scope(rt.settings) as session:
            result = cancel(session, uid, now=now, tenant=scope)
            if result.status is None:
                raise JobNotFound(uid)
            if not result.cancelled:
                raise JobNotCancellable(_not_cancellable_message(uid, result.status))
            # A workflow's task: the tasks its end released (run_if failure or always) start now.
            released = workflows.claim_released(session, now=now, lease=rt.settings.lease_seconds)
            job = queries.get_job(session, uid, scope)
        if released:
            publisher().publish(released)
        return job


def _not_cancellable_message(job_id: uuid.UUID, status: str) -> str:
    if status == JobStatus.CANCELLED.value:
        return f"Job '{job_id}' is already CANCELLED"
    if status == JobStatus.RUNNING.value:
        return f"Job '{job_id}' is RUNNING and can no longer be cancelled"
    return f"Job '{job_id}' has finished ({status}) and can no longer be cancelled"


@blp.route("/<job_id>/attempts")
class JobAttemptsView(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, AttemptListSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """The job's attempts in order: start, end, outcome, output, error, executor."""
        with session_scope(runtime().settings) as session:
            return {"items": queries.list_attempts(session, job_id_of(job_id), principal().tenant_scope)}
