"""The /api/jobs endpoints."""

from __future__ import annotations

import uuid
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from common.infra.db import session_scope
from common.infra.errors import JobNotFound
from common.core.store import cancel
from common.core.states import JobStatus

from api import queries
from api.context import request_now, runtime
from api.create import create_job, dispatch_if_due, request_hash
from api.errors import JobNotCancellable
from api.parsing import JsonParser
from api.schemas import (
    AttemptListSchema,
    Cursor,
    IdempotencyHeaderSchema,
    JobCreateSchema,
    JobPageSchema,
    JobQuerySchema,
    JobSchema,
    StatsSchema,
)

blp = Blueprint("jobs", __name__, url_prefix="/api/jobs", description="Create, list, inspect and cancel jobs.")
blp.ARGUMENTS_PARSER = JsonParser()  # before the views below: @blp.arguments reads it


@blp.before_request
def _require_json_body() -> None:
    # Without this a form or text body would be read as "no body" and answered with a list
    # of missing fields, which hides the real mistake.
    if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
        abort(415, message="Send the request body as JSON (Content-Type: application/json).")


def _job_id(raw: str) -> uuid.UUID:
    """A path id; one that is not a UUID names no job, so it is a 404 like any unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise JobNotFound(raw) from None


def _location(job_id: uuid.UUID) -> dict[str, str]:
    return {"Location": url_for("jobs.JobView", job_id=str(job_id))}


@blp.route("")
class JobsView(MethodView):
    @blp.arguments(JobQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, JobPageSchema)
    def get(self, limit: int, cursor: Cursor | None = None, status: list[str] | None = None,
            **where: Any) -> dict[str, Any]:
        """List jobs in execute_at order, filtered, one page at a time.

        Pass ``next_cursor`` back as ``cursor`` for the next page; it is null on the last one.
        """
        filters = queries.JobFilter(statuses=tuple(status or ()), **where)
        with session_scope(runtime().settings) as session:
            items, next_cursor = queries.list_jobs(session, filters, limit=limit, after=cursor)
        return {"items": items, "next_cursor": next_cursor.encode() if next_cursor else None}

    @blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
    @blp.arguments(JobCreateSchema)
    @blp.response(201, JobSchema, headers={"Location": {"description": "URL of the job", "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=JobSchema, description="A repeat of an earlier request with the same Idempotency-Key.")
    def post(self, fields: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """Create a job.

        Give exactly one of execute_at (with an offset) and delay_seconds. A job due before the
        scanner's next pass is dispatched at once; if Kafka is unreachable it stays SCHEDULED
        and the scanner dispatches it. With an Idempotency-Key, repeating the same request
        returns the first job with 200; the same key with another body is a 422.
        """
        rt = runtime()
        now = request_now()
        job, created = create_job(
            rt, fields, now=now, idempotency_key=idempotency_key, body_hash=request_hash(request.get_json())
        )
        if not created:
            return job, 200, _location(job.id)
        return dispatch_if_due(rt, job, now=now), 201, _location(job.id)


@blp.route("/stats")
class JobStatsView(MethodView):
    @blp.response(200, StatsSchema)
    def get(self) -> dict[str, Any]:
        """Count jobs by status and type, and the SCHEDULED jobs already overdue."""
        with session_scope(runtime().settings) as session:
            return queries.job_stats(session, now=request_now())


@blp.route("/<job_id>")
class JobView(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id: str) -> Any:
        """Get one job."""
        with session_scope(runtime().settings) as session:
            return queries.get_job(session, _job_id(job_id))

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
        uid = _job_id(job_id)
        with session_scope(runtime().settings) as session:
            result = cancel(session, uid, now=request_now())
            if result.status is None:
                raise JobNotFound(uid)
            if not result.cancelled:
                raise JobNotCancellable(_not_cancellable_message(uid, result.status))
            return queries.get_job(session, uid)


def _not_cancellable_message(job_id: uuid.UUID, status: str) -> str:
    if status == JobStatus.CANCELLED.value:
        return f"Job '{job_id}' is already CANCELLED"
    if status == JobStatus.RUNNING.value:
        return f"Job '{job_id}' is RUNNING and can no longer be cancelled"
    return f"Job '{job_id}' has finished ({status}) and can no longer be cancelled"


@blp.route("/<job_id>/attempts")
class JobAttemptsView(MethodView):
    @blp.response(200, AttemptListSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """The job's attempts in order: start, end, outcome, output, error, executor."""
        with session_scope(runtime().settings) as session:
            return {"items": queries.list_attempts(session, _job_id(job_id))}
