"""Storing and steering workflows: create one (the workflow row and a job per task), read it
with its tasks, list them, cancel one, rerun one from its failed tasks. Releasing tasks as
their dependencies settle is common/core/workflow_release.py; the graph's rules are
common/core/workflow_graph.py.

Functions take an open session (the caller owns the transaction) and ``now``."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from common.core import store, workflow_graph as graph, workflow_release
from common.core.control import rerun_values
from common.core.messages import DispatchMessage
from common.core.models import Job, Workflow
from common.core.states import JobStatus
from common.core.workflow_templates import has_references
from common.infra.clock import ensure_aware

log = logging.getLogger(__name__)

#: The fields of a task that describe its place in the graph rather than its job.
GRAPH_FIELDS = ("key", "depends_on", "run_if", "allow_failure")


def graph_of(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``graph`` column of a workflow of these (validated) tasks: each task's place, and
    its payload as the template to render when it is released, if it references others."""
    return {"tasks": [
        {
            "key": task["key"], "depends_on": list(task.get("depends_on") or ()),
            "run_if": task.get("run_if") or "success", "allow_failure": bool(task.get("allow_failure")),
            "template": task["payload"] if has_references(task.get("payload")) else None,
        }
        for task in tasks
    ]}


def new_workflow(fields: Mapping[str, Any], *, tenant: str, idempotency_key: str | None = None,
                 request_hash: str | None = None, schedule_id: uuid.UUID | None = None,
                 scheduled_for: datetime | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The row of a workflow and the rows of its task jobs, from validated ``fields`` (name,
    execute_at, failure_policy, meta, tasks)."""
    workflow_id = uuid.uuid4()
    tasks = fields["tasks"]
    workflow = {
        "id": workflow_id, "tenant": tenant, "name": fields["name"], "status": graph.WorkflowStatus.RUNNING,
        "failure_policy": fields.get("failure_policy") or "fail_fast", "execute_at": fields["execute_at"],
        "graph": graph_of(tasks), "meta": fields.get("meta") or {}, "idempotency_key": idempotency_key,
        "request_hash": request_hash if idempotency_key else None, "schedule_id": schedule_id,
        "scheduled_for": scheduled_for, "runs": 1,
    }
    jobs = []
    for task in tasks:
        job = {name: value for name, value in task.items() if name not in GRAPH_FIELDS}
        job.update(
            id=uuid.uuid4(), tenant=tenant, workflow_id=workflow_id, task_key=task["key"],
            name=task.get("name") or f"{fields['name']}.{task['key']}", execute_at=fields["execute_at"],
            payload=task.get("payload") or {}, meta=task.get("meta") or {}, priority=task.get("priority") or 0,
            misfire_grace_seconds=task.get("misfire_grace_seconds"), idempotency_key=None, request_hash=None,
            status=JobStatus.WAITING.value if task.get("depends_on") else None,
        )
        jobs.append(job)
    return workflow, jobs


def add_workflow(
    session: Session, workflow: dict[str, Any], jobs: list[dict[str, Any]], *, claim_roots: bool, now: datetime,
    lease: float,
) -> list[DispatchMessage]:
    """Insert ``workflow`` and its task ``jobs``: the tasks without dependencies SCHEDULED at the
    workflow's time (inserted claimed when ``claim_roots``: due before the scanner's next pass),
    the others WAITING. Returns the dispatches to publish after the commit."""
    session.execute(insert(Workflow.__table__), [{
        **{key: value for key, value in workflow.items() if key != "meta"}, "metadata": workflow["meta"],
        "created_at": now, "updated_at": now, "finished_at": None,
    }])
    claim = [claim_roots and job["status"] is None for job in jobs]
    return store.add_jobs(session, jobs, claim=claim, now=now, lease=lease)


# --- reading --------------------------------------------------------------------------------

#: What a workflow's page shows of each task.
_TASK_COLUMNS = (
    Job.id, Job.task_key, Job.name, Job.type, Job.status, Job.execute_at, Job.started_at, Job.finished_at,
    Job.attempts, Job.output, Job.error,
)


def _started(tasks: Sequence[Mapping[str, Any]]) -> datetime | None:
    times = [ensure_aware(t["started_at"]) for t in tasks if t.get("started_at") is not None]
    return min(times) if times else None


def as_dict(workflow: Workflow, tasks: Sequence[Any] | None, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A workflow as the API returns it: with ``tasks`` (rows of :data:`_TASK_COLUMNS`, shown in
    the order the definition gave them), or with only ``task_counts`` (a listing)."""
    result: dict[str, Any] = {
        column: getattr(workflow, column)
        for column in ("id", "tenant", "name", "status", "failure_policy", "execute_at", "created_at", "updated_at",
                       "finished_at", "runs", "schedule_id", "scheduled_for")
    }
    result["metadata"] = workflow.meta
    if tasks is None:
        result["task_counts"] = dict(counts or {})
        return result
    specs = workflow.graph["tasks"]
    by_key = {row.task_key: row for row in tasks}
    shown = []
    for spec in specs:
        row = by_key.get(spec["key"])
        if row is None:
            continue
        shown.append({
            "key": spec["key"], "id": row.id, "name": row.name, "type": row.type, "status": row.status,
            "depends_on": spec["depends_on"], "run_if": spec["run_if"], "allow_failure": spec["allow_failure"],
            "execute_at": row.execute_at, "started_at": row.started_at, "finished_at": row.finished_at,
            "attempts": row.attempts, "output": row.output, "error": row.error,
        })
    result["tasks"] = shown
    result["task_counts"] = dict(Counter(task["status"] for task in shown))
    result["started_at"] = _started(shown)
    return result


def find(session: Session, workflow_id: uuid.UUID, *, tenant: str | None = None, lock: bool = False) -> Workflow | None:
    """The workflow, if it exists and belongs to ``tenant`` (None: any)."""
    query = select(Workflow).where(Workflow.id == workflow_id)
    if tenant is not None:
        query = query.where(Workflow.tenant == tenant)
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def read(session: Session, workflow: Workflow) -> dict[str, Any]:
    """:func:`as_dict` of ``workflow`` with its tasks."""
    tasks = session.execute(select(*_TASK_COLUMNS).where(Job.workflow_id == workflow.id)).all()
    return as_dict(workflow, tasks)


@dataclass(frozen=True)
class WorkflowFilter:
    tenant: str | None = None  # None: every tenant (admins)
    statuses: tuple[str, ...] = ()
    name: str | None = None
    schedule_id: uuid.UUID | None = None


def list_page(session: Session, where: WorkflowFilter, *, limit: int,
              after: tuple[datetime, uuid.UUID] | None = None) -> tuple[list[dict[str, Any]], tuple[datetime, uuid.UUID] | None]:
    """One page of workflows, newest first (created_at, id descending), each with its task
    counts, and where the next page starts (None at the end)."""
    query = select(Workflow)
    if where.tenant is not None:
        query = query.where(Workflow.tenant == where.tenant)
    if where.statuses:
        query = query.where(Workflow.status.in_(where.statuses))
    if where.name is not None:
        query = query.where(Workflow.name == where.name)
    if where.schedule_id is not None:
        query = query.where(Workflow.schedule_id == where.schedule_id)
    if after is not None:
        query = query.where(tuple_(Workflow.created_at, Workflow.id) < tuple_(*after))
    rows = list(session.scalars(query.order_by(Workflow.created_at.desc(), Workflow.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    counts: dict[uuid.UUID, Counter[str]] = {row.id: Counter() for row in rows}
    if rows:
        for workflow_id, status, count in session.execute(
            select(Job.workflow_id, Job.status, func.count())
            .where(Job.workflow_id.in_(list(counts))).group_by(Job.workflow_id, Job.status)
        ):
            counts[workflow_id][status] = count
    items = [as_dict(row, None, counts[row.id]) for row in rows]
    return items, ((rows[-1].created_at, rows[-1].id) if more else None)


# --- steering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A cancel's or rerun's result: ``refused`` names the status that refused it (None: done)."""

    workflow: Workflow
    refused: str | None = None


def cancel(session: Session, workflow: Workflow, *, now: datetime) -> Outcome:
    """Cancel a RUNNING workflow (its row locked by the caller): it is CANCELLED at once, and so
    is every task that has not started; tasks already running finish, and nothing is released
    after them."""
    if workflow.status != graph.WorkflowStatus.RUNNING:
        return Outcome(workflow, workflow.status)
    ids = list(session.scalars(
        select(Job.id).where(Job.workflow_id == workflow.id, Job.status.in_(graph.NOT_STARTED))
        .order_by(Job.id).with_for_update()
    ))
    if ids:
        session.execute(
            update(Job).where(Job.id.in_(ids), Job.status.in_(graph.NOT_STARTED))
            .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now, lease_until=None,
                    error="cancelled with its workflow")
            .execution_options(synchronize_session=False)
        )
    workflow.status = graph.WorkflowStatus.CANCELLED
    workflow.finished_at = now
    workflow.updated_at = now
    log.info("workflow %s cancelled: %d tasks that had not started cancelled", workflow.id, len(ids))
    return Outcome(workflow)


def rerun(session: Session, workflow: Workflow, *, now: datetime) -> Outcome:
    """Run a FAILED or CANCELLED workflow (its row locked by the caller) again from where it
    failed: its FAILED, CANCELLED and SKIPPED tasks get a new run (their history stays; a
    SUCCESS task keeps its result), WAITING again, and the workflow is RUNNING; then those
    whose dependencies all succeeded are released at once (the caller dispatches them:
    :func:`common.core.workflow_release.released`)."""
    if workflow.status not in (graph.WorkflowStatus.FAILED, graph.WorkflowStatus.CANCELLED):
        return Outcome(workflow, workflow.status)
    again = (JobStatus.FAILED.value, JobStatus.CANCELLED.value, JobStatus.SKIPPED.value)
    ids = list(session.scalars(
        select(Job.id).where(Job.workflow_id == workflow.id, Job.status.in_(again)).order_by(Job.id).with_for_update()
    ))
    if ids:
        values = rerun_values(now)
        values[Job.status] = JobStatus.WAITING.value
        session.execute(
            update(Job).where(Job.id.in_(ids), Job.status.in_(again)).values(values)
            .execution_options(synchronize_session=False)
        )
    workflow.status = graph.WorkflowStatus.RUNNING
    workflow.finished_at = None
    workflow.updated_at = now
    workflow.runs += 1
    session.flush()
    workflow_release.advance(session, workflow, now=now)
    session.refresh(workflow)
    log.info("workflow %s rerun (run %d): %d tasks run again", workflow.id, workflow.runs, len(ids))
    return Outcome(workflow)


def claim_released(session: Session, *, now: datetime, lease: float) -> list[DispatchMessage]:
    """Claim the tasks released so far in ``session``'s transaction, for the caller to publish
    after the commit (like a create's direct dispatch)."""
    ids = workflow_release.released(session)
    return store.claim_ids(session, ids, now=now, lease=lease).messages if ids else []


def by_key(session: Session, tenant: str, key: str) -> Workflow | None:
    return session.scalar(select(Workflow).where(Workflow.tenant == tenant, Workflow.idempotency_key == key))



def prune_finished(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` workflows that ended before ``before``, oldest first, with their
    tasks and the tasks' history; returns how many workflows. Rows another transaction holds
    are skipped, not waited for."""
    ids = list(session.scalars(
        select(Workflow.id)
        .where(Workflow.status != graph.WorkflowStatus.RUNNING, Workflow.finished_at < before)
        .order_by(Workflow.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ))
    if not ids:
        return 0
    session.execute(delete(Job).where(Job.workflow_id.in_(ids)).execution_options(synchronize_session=False))
    return session.execute(
        delete(Workflow).where(Workflow.id.in_(ids)).execution_options(synchronize_session=False)
    ).rowcount or 0


# --- schedule occurrences -------------------------------------------------------------------


def add_occurrences(session: Session, items: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]],
                    now: datetime) -> list[uuid.UUID]:
    """Insert the workflows of schedule occurrences (each ``(workflow, jobs)`` of
    :func:`new_workflow` with ``schedule_id`` and ``scheduled_for``), skipping each one whose
    (schedule_id, scheduled_for) exists already, and the task jobs of those inserted only: an
    occurrence is made once, whoever makes it (as :func:`common.core.store.add_occurrences`
    for jobs). Roots are SCHEDULED, unclaimed (the caller claims those due too soon for the
    scanner), the others WAITING. Returns the ids of the workflows inserted, in order."""
    if not items:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    statement = (
        dialect_insert(Workflow.__table__)
        .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"])
        .returning(Workflow.__table__.c.id)
    )
    rows = [
        {**{key: value for key, value in workflow.items() if key != "meta"}, "metadata": workflow["meta"],
         "created_at": now, "updated_at": now, "finished_at": None}
        for workflow, _ in items
    ]
    inserted: set[uuid.UUID] = set()
    for start in range(0, len(rows), 500):
        inserted.update(session.scalars(statement.values(rows[start:start + 500])).all())
    jobs = [job for workflow, tasks in items if workflow["id"] in inserted for job in tasks]
    store.add_jobs(session, jobs, claim=[False] * len(jobs), now=now, lease=0.0)
    return [workflow["id"] for workflow, _ in items if workflow["id"] in inserted]
