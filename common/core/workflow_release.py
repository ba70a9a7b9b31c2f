"""Releasing a workflow's tasks, in the transaction that settles their dependencies.

Every statement of :mod:`common.core.store` that moves a job to SUCCESS, FAILED, CANCELLED or
SKIPPED calls :func:`after_settle` with the workflows of the tasks it settled, before its
transaction commits. That locks each workflow's row (so two transactions settling two parents
of one task are serialized: the second sees the first's outcome, and the task is released by
whichever settles its last dependency), reads the workflow's tasks, and writes what
:mod:`common.core.workflow_graph` decides:

- under ``fail_fast``, after a task failed that may not: every task that has not started is
  CANCELLED, except those meant to run after a failure (``run_if`` failure or always);
- each WAITING task whose dependencies have all settled is released (SCHEDULED, due now, its
  payload's ``{{ … }}`` rendered from what its upstream tasks produced) or SKIPPED, following
  skips down the graph;
- once every task has settled, the workflow's own status and ``finished_at``.

Each change is a compare-and-set on the task's status (a task is released only from WAITING), so
however many writers see a parent's end (the executor's write-through and the result writer
both do), a task is released once. The release commits with the settle or not at all; the
scanner's sweep (:func:`sweep`) finds anything left over (e.g. a row changed by hand).

The tasks released are noted in ``session.info`` (:func:`released`): the caller claims and
publishes them after the commit (common/core/dispatch.py), so they start within milliseconds;
a caller that does not leaves them SCHEDULED and due, for the scanner's next pass."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Iterable, Mapping

from marshmallow import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.core import workflow_graph as graph
from common.core.jobtypes import load_payload
from common.core.models import Job, Workflow
from common.core.states import JobStatus
from common.core.workflow_templates import Missing, PathError, render
from common.infra.clock import ensure_aware, isoformat

log = logging.getLogger(__name__)

#: ``session.info`` key: ids of the tasks released in the session's transaction.
RELEASED = "chronoq.released"


def released(session: Session) -> list[uuid.UUID]:
    """The tasks released in ``session``'s transaction so far (and forgets them)."""
    return session.info.pop(RELEASED, [])


def after_settle(session: Session, workflow_ids: Iterable[Any], *, now: datetime) -> None:
    """Advance the given workflows (some of whose tasks this transaction settled): lock their rows
    in id order (as every writer does, so two cannot deadlock on them), then release, skip or
    cancel their tasks and settle the workflows that are done."""
    ids = sorted({uuid.UUID(str(w)) for w in workflow_ids if w is not None})
    if not ids:
        return
    rows = session.execute(
        select(Workflow.id, Workflow.name, Workflow.status, Workflow.failure_policy, Workflow.execute_at,
               Workflow.graph)
        .where(Workflow.id.in_(ids))
        .order_by(Workflow.id)
        .with_for_update()
    ).all()
    for row in rows:
        if row.status == graph.WorkflowStatus.RUNNING:
            advance(session, row, now=now)


def _tasks(session: Session, workflow_id: uuid.UUID) -> dict[str, Any]:
    return {
        row.task_key: row
        for row in session.execute(
            select(Job.id, Job.task_key, Job.status, Job.type, Job.execute_at).where(Job.workflow_id == workflow_id)
        )
    }


def context_of(session: Session, workflow: Any, tasks: Mapping[str, Any]) -> dict[str, Any]:
    """What templates and conditions read: each task's output, status, id and error, and the
    workflow's id, name and time."""
    rows = session.execute(
        select(Job.task_key, Job.id, Job.status, Job.output, Job.error).where(Job.workflow_id == workflow.id)
    ).all()
    return {
        "tasks": {
            row.task_key: {"output": row.output, "status": row.status, "id": str(row.id), "error": row.error}
            for row in rows
        },
        "workflow": {"id": str(workflow.id), "name": workflow.name,
                     "execute_at": isoformat(ensure_aware(workflow.execute_at))},
    }


def advance(session: Session, workflow: Any, *, now: datetime) -> int:
    """Bring one RUNNING workflow (its row locked by the caller) up to date with its tasks;
    returns how many tasks changed. Repeats while a release fails (a payload that does not
    render fails its task, which settles it)."""
    specs = {spec["key"]: spec for spec in workflow.graph["tasks"]}
    nodes = [graph.node_of(spec) for spec in workflow.graph["tasks"]]
    changed = 0
    for _ in range(len(nodes) + 1):
        tasks = _tasks(session, workflow.id)
        statuses = {key: row.status for key, row in tasks.items()}
        step = 0
        failed = graph.failing(nodes, statuses) if workflow.failure_policy == "fail_fast" else None
        if failed is not None:
            step += _cancel(session, tasks, graph.fail_fast_victims(nodes, statuses), now=now,
                            error=f"cancelled: task {failed!r} failed (failure_policy fail_fast)")
            if step:
                tasks = _tasks(session, workflow.id)
                statuses = {key: row.status for key, row in tasks.items()}
        cached: dict[str, Any] = {}

        def context() -> dict[str, Any]:
            if not cached:
                cached.update(context_of(session, workflow, tasks))
            return cached

        decided = graph.plan(nodes, statuses, context)
        # What this transaction wrote keeps ``statuses`` exact; a compare-and-set that found the
        # task changed by another one leaves its status unknown, to be read again.
        exact = True
        for key, reason in decided.skip.items():
            if _set(session, tasks[key], JobStatus.SKIPPED.value, now=now, error=reason):
                statuses[key] = JobStatus.SKIPPED.value
                step += 1
            else:
                exact = False
        failures = 0
        for key in decided.release:
            ok = _release(session, workflow, tasks[key], specs[key], context, now=now)
            if ok is None:
                exact = False
                continue
            statuses[key] = JobStatus.SCHEDULED.value if ok else JobStatus.FAILED.value
            step += 1
            failures += not ok
        changed += step
        if not failures:
            break
    _finish(session, workflow, nodes, statuses if exact else None, now=now)
    return changed


def _set(session: Session, task: Any, status: str, *, now: datetime, error: str | None) -> int:
    """A WAITING task settled without running (SKIPPED, or FAILED when its payload did not render)."""
    return session.execute(
        update(Job)
        .where(Job.id == task.id, Job.status == JobStatus.WAITING.value)
        .values(status=status, finished_at=now, updated_at=now, error=error)
        .execution_options(synchronize_session=False)
    ).rowcount or 0


def _cancel(session: Session, tasks: Mapping[str, Any], keys: list[str], *, now: datetime, error: str) -> int:
    """Cancel the tasks ``keys`` that still have not started (in id order, as every writer locks)."""
    ids = sorted(tasks[key].id for key in keys)
    if not ids:
        return 0
    locked = list(session.scalars(
        select(Job.id).where(Job.id.in_(ids), Job.status.in_(graph.NOT_STARTED)).order_by(Job.id).with_for_update()
    ))
    if not locked:
        return 0
    return session.execute(
        update(Job)
        .where(Job.id.in_(locked), Job.status.in_(graph.NOT_STARTED))
        .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now, lease_until=None, error=error)
        .execution_options(synchronize_session=False)
    ).rowcount or 0


def _release(session: Session, workflow: Any, task: Any, spec: Mapping[str, Any], context: Any, *,
             now: datetime) -> bool | None:
    """Make a WAITING task SCHEDULED and due now, with its payload rendered if it has
    references. True: released; False: its payload did not render (the task is FAILED); None:
    it was no longer WAITING (someone else settled it)."""
    values: dict[str, Any] = {
        "status": JobStatus.SCHEDULED.value, "updated_at": now,
        "execute_at": max(now, ensure_aware(workflow.execute_at)),
    }
    template = spec.get("template")
    if template is not None:
        try:
            values["payload"] = load_payload(task.type, render(template, context()))
        except (Missing, PathError) as exc:
            return False if _set(session, task, JobStatus.FAILED.value, now=now, error=f"payload: {exc}") else None
        except ValidationError as exc:
            error = f"payload, once rendered, is not valid for type {task.type}: {exc.messages}"
            return False if _set(session, task, JobStatus.FAILED.value, now=now, error=error) else None
    done = session.execute(
        update(Job)
        .where(Job.id == task.id, Job.status == JobStatus.WAITING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        return None
    session.info.setdefault(RELEASED, []).append(task.id)
    log.debug("workflow %s: task %s released (job %s)", workflow.id, spec["key"], task.id)
    return True


def _finish(session: Session, workflow: Any, nodes: list[graph.TaskNode], statuses: Mapping[str, str] | None, *,
            now: datetime) -> None:
    """Settle the workflow once every task has (``statuses``: the tasks' as this transaction
    knows them for sure; None: read them)."""
    if statuses is None:
        statuses = {key: row.status for key, row in _tasks(session, workflow.id).items()}
    status = graph.final_status(nodes, statuses)
    if status is None:
        return
    session.execute(
        update(Workflow)
        .where(Workflow.id == workflow.id, Workflow.status == graph.WorkflowStatus.RUNNING)
        .values(status=status, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    log.info("workflow %s %s", workflow.id, status)


def sweep(session: Session, *, now: datetime, limit: int = 100) -> int:
    """The scanner's safety net: advance the RUNNING workflows none of whose tasks is under way
    (SCHEDULED, QUEUED, RUNNING or RETRYING). Such a workflow is stuck: its roots never wait,
    so some WAITING task of it has all its dependencies settled (or every task has, and only
    the workflow's own status is behind). Skips workflows another transaction holds; returns
    how many tasks changed."""
    under_way = (JobStatus.SCHEDULED.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value,
                 JobStatus.RETRYING.value)
    busy = select(Job.id).where(Job.workflow_id == Workflow.id, Job.status.in_(under_way)).exists()
    rows = session.execute(
        select(Workflow.id, Workflow.name, Workflow.status, Workflow.failure_policy, Workflow.execute_at,
               Workflow.graph)
        .where(Workflow.status == graph.WorkflowStatus.RUNNING, ~busy)
        .order_by(Workflow.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    changed = 0
    for row in rows:
        moved = advance(session, row, now=now)
        if moved:
            log.warning("workflow %s: %d tasks released or settled by the sweep (their dependencies had "
                        "settled without releasing them)", row.id, moved)
        changed += moved
    return changed
