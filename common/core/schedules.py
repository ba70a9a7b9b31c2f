"""Schedules in the database: making their occurrences, pausing and resuming them, and their
on-time figures. The fire-time arithmetic is :mod:`common.core.firetimes`; here it meets the
rows.

A schedule's template (the ``job`` column) is a job template, or ``{"workflow": {...}}``, a
workflow template (:func:`workflow_template` tells them apart): each occurrence is then a job
(``jobs.schedule_id``) or a workflow (``workflows.schedule_id``; its tasks are jobs without
one).

An occurrence is made once: its identity is (schedule_id, scheduled_for), a unique key of
``jobs`` and of ``workflows``, and it is inserted with ON CONFLICT DO NOTHING; on top of that,
a scanner locks the schedules it works on with SKIP LOCKED, so two scanners do not even
compute the same occurrences. ``made_until`` is the nominal time up to which a schedule's
occurrences have been decided (made, or passed over by the catch-up policy); nothing at or
before it is made again, so a restart replays nothing.

Functions take an open session (the caller owns the transaction) and ``now``."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from sqlalchemy import delete, func, null, select, update
from sqlalchemy.orm import Session

from common.core import store, workflow_graph as graph, workflows
from common.core.firetimes import Catchup, DstFold, DstGap, FireTime, Timing, fire_times, missed, next_fire
from common.core.models import Job, JobAttempt, Schedule, Workflow
from common.core.states import JobStatus
from common.infra.clock import ensure_aware

log = logging.getLogger(__name__)

#: A fire time that passed less than this ago, unmade, is made by the scanner and run now (a
#: little late: the scanner woke late), not counted as missed.
MISSED_AFTER = timedelta(seconds=1)
#: Occurrences made for one schedule per pass; a busy schedule is come back to at once.
MAX_PER_PASS = 1000
#: Schedules locked and worked on per transaction.
SCHEDULES_PER_PASS = 100
#: Occurrences the on-time figures look at.
FIGURES_OVER = 100

#: The template fields an occurrence copies from its schedule's ``job``.
TEMPLATE_FIELDS = ("name", "type", "payload", "meta", "priority", "max_retries", "timeout_seconds",
                   "misfire_grace_seconds")
#: The key of a stored workflow template: ``{"workflow": {name, failure_policy, meta, tasks}}``.
WORKFLOW = "workflow"


def workflow_template(template: Any) -> dict[str, Any] | None:
    """The workflow template in a schedule's stored template (its ``job`` column), or None
    when it is a job template (which never has a ``workflow`` field: the API refuses one)."""
    if isinstance(template, Mapping) and isinstance(template.get(WORKFLOW), Mapping):
        return dict(template[WORKFLOW])
    return None


def stored_template(*, job: Mapping[str, Any] | None = None, workflow: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """What the ``job`` column holds for a validated job or workflow template (exactly one)."""
    if (job is None) == (workflow is None):
        raise ValueError("a schedule has exactly one template: a job or a workflow")
    return dict(job) if job is not None else {WORKFLOW: dict(workflow or {})}


def timing_of(schedule: Any) -> Timing:
    """The fire-time definition of a :class:`Schedule` (or anything with its columns)."""
    return Timing(
        cron=schedule.cron,
        interval_seconds=schedule.interval_seconds,
        timezone=schedule.timezone,
        start_at=ensure_aware(schedule.start_at) if schedule.start_at else None,
        end_at=ensure_aware(schedule.end_at) if schedule.end_at else None,
        dst_gap=DstGap(schedule.dst_gap),
        dst_fold=DstFold(schedule.dst_fold),
        jitter_seconds=schedule.jitter_seconds or 0.0,
        seed=str(schedule.id),
    )


def first_fire(schedule: Any, after: datetime) -> datetime | None:
    """The nominal time of the schedule's first occurrence after ``after`` (None: never)."""
    found = next_fire(timing_of(schedule), after)
    return found.nominal if found else None


@dataclass
class Made:
    """What a pass made: occurrences per schedule, the ids of the jobs inserted that are due
    at the occurrence's time (job occurrences, and the root tasks of workflow occurrences: what
    the API claims at once when due too soon for the scanner), and of the workflows inserted."""

    occurrences: int = 0
    caught_up: int = 0
    schedules: int = 0
    job_ids: list[uuid.UUID] = field(default_factory=list)
    workflow_ids: list[uuid.UUID] = field(default_factory=list)
    #: Some schedule has more occurrences due before the horizon than one pass makes.
    more: bool = False

    def __iadd__(self, other: "Made") -> "Made":
        self.occurrences += other.occurrences
        self.caught_up += other.caught_up
        self.schedules += other.schedules
        self.job_ids += other.job_ids
        self.workflow_ids += other.workflow_ids
        self.more = self.more or other.more
        return self


def _occurrence(schedule: Schedule, fire: FireTime) -> dict[str, Any]:
    template = schedule.job
    job = {name: template.get(name) for name in TEMPLATE_FIELDS}
    job.update(
        id=uuid.uuid4(), tenant=schedule.tenant, execute_at=fire.at, schedule_id=schedule.id,
        scheduled_for=fire.nominal, idempotency_key=None, request_hash=None,
        overlap=schedule.overlap_policy if schedule.overlap_policy != "allow" else None,
        name=template.get("name") or schedule.name or f"schedule {schedule.id}",
        payload=template.get("payload") or {}, meta=template.get("meta") or {},
        priority=template.get("priority") or 0,
    )
    return job


def _workflow_occurrence(schedule: Schedule, template: Mapping[str, Any], fire: FireTime
                         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The workflow (and its task jobs) of one occurrence of a workflow schedule."""
    return workflows.new_workflow({**template, "execute_at": fire.at}, tenant=schedule.tenant,
                                  schedule_id=schedule.id, scheduled_for=fire.nominal)


def _insert(session: Session, schedule: Schedule, fires: list[FireTime], now: datetime, result: Made) -> None:
    """Insert the occurrences of ``fires`` that do not exist yet, noting them in ``result``."""
    flow = workflow_template(schedule.job)
    if flow is None:
        inserted = store.add_occurrences(session, [_occurrence(schedule, fire) for fire in fires], now=now)
        result.job_ids = inserted
        result.occurrences = len(inserted)
        return
    items = [_workflow_occurrence(schedule, flow, fire) for fire in fires]
    made = workflows.add_occurrences(session, items, now)
    fresh = set(made)
    result.workflow_ids = made
    result.occurrences = len(made)
    # add_jobs completed each inserted task's row: its roots are SCHEDULED, the others WAITING.
    result.job_ids = [job["id"] for workflow, jobs in items if workflow["id"] in fresh
                      for job in jobs if job["status"] == JobStatus.SCHEDULED.value]


def make_for(session: Session, schedule: Schedule, *, now: datetime, horizon: datetime,
             missed_after: timedelta = MISSED_AFTER) -> Made:
    """Make ``schedule``'s occurrences whose nominal time is before ``horizon`` and after its
    ``made_until``: those that were missed (more than ``missed_after`` before ``now``; a resume
    passes 0: every time that passed while paused was missed) as
    its catch-up policy says, the others at their own times. Moves ``made_until`` and
    ``next_fire_at`` on. The schedule must be locked by the caller (or new)."""
    result = Made(schedules=1)
    if schedule.paused:
        return result
    timing = timing_of(schedule)
    made_until = ensure_aware(schedule.made_until) if schedule.made_until else now
    late = now - missed_after
    fires: list[FireTime] = []
    if made_until < late:
        fires = missed(timing, made_until, late, Catchup(schedule.catchup_policy), limit=schedule.catchup_limit,
                       per_second=schedule.catchup_per_second, run_from=now)
        result.caught_up = len(fires)
        if fires:
            log.info("schedule %s: %d missed occurrences caught up (%s)", schedule.id, len(fires),
                     schedule.catchup_policy)
        made_until = late
    fires += fire_times(timing, made_until, limit=MAX_PER_PASS, until=horizon)
    result.more = len(fires) >= MAX_PER_PASS
    if fires:
        _insert(session, schedule, fires, now, result)
        made_until = max(made_until, max(f.nominal for f in fires))
    schedule.made_until = made_until
    schedule.next_fire_at = first_fire(schedule, made_until)
    schedule.updated_at = now
    return result


def make_due(session: Session, *, now: datetime, horizon: datetime, limit: int = SCHEDULES_PER_PASS) -> Made:
    """The scanner's pass: lock up to ``limit`` active schedules whose next fire time is before
    ``horizon`` (skipping those another scanner holds) and make their occurrences."""
    result = Made()
    due = session.scalars(
        select(Schedule)
        .where(Schedule.paused.is_(False), Schedule.next_fire_at < horizon)
        .order_by(Schedule.next_fire_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for schedule in due:
        try:
            result += make_for(session, schedule, now=now, horizon=horizon)
        except ValueError as exc:
            # A definition that no longer computes (e.g. its zone left the tz database) must
            # not stop the other schedules: this one stops until it is changed.
            log.error("schedule %s: cannot compute its fire times (%s); it makes no occurrence until changed",
                      schedule.id, exc)
            schedule.next_fire_at = None
    result.more = result.more or len(due) >= limit
    return result


def withdraw(session: Session, schedule: Schedule, *, now: datetime) -> int:
    """Take back the schedule's occurrences that have not started: they are deleted (they
    were only ever a plan; a dispatched one can then no longer start, as its start claim finds
    no row), except an occurrence that was rerun, which is cancelled to keep its history.
    A workflow occurrence is taken back, with its tasks, only when none of them has started
    (:func:`_withdraw_workflows`). ``made_until`` goes back to ``now``, so what follows is
    made again (by a new definition, on resume). Returns how many."""
    unstarted = (
        Job.schedule_id == schedule.id,
        Job.status.in_([JobStatus.SCHEDULED.value, JobStatus.QUEUED.value]),
        Job.attempts == Job.attempt_base,
    )
    deleted = session.execute(
        delete(Job).where(*unstarted, Job.runs == 1).execution_options(synchronize_session=False)
    ).rowcount or 0
    cancelled = session.execute(
        update(Job).where(*unstarted)
        .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now, lease_until=None,
                error="withdrawn: its schedule was paused, changed or deleted")
        .execution_options(synchronize_session=False)
    ).rowcount or 0
    deleted += _withdraw_workflows(session, schedule, now=now)
    schedule.made_until = now
    if deleted or cancelled:
        log.info("schedule %s: %d occurrences not started taken back", schedule.id, deleted + cancelled)
    return deleted + cancelled


#: A task that has started (or settled some other way): its workflow is under way.
_STARTED_TASK = Job.status.not_in(graph.NOT_STARTED) | (Job.attempts != Job.attempt_base)


def _withdraw_workflows(session: Session, schedule: Schedule, *, now: datetime) -> int:
    """Take back the schedule's RUNNING workflow occurrences none of whose tasks has started
    (or settled): deleted with their tasks, or cancelled when rerun (keeping their history).
    Their tasks are locked in id order, then checked again, so a task an executor starts
    meanwhile either keeps its workflow or finds its row gone. Returns how many."""
    candidates = list(session.scalars(
        select(Workflow.id).where(
            Workflow.schedule_id == schedule.id, Workflow.status == graph.WorkflowStatus.RUNNING,
            ~select(Job.id).where(Job.workflow_id == Workflow.id, _STARTED_TASK).exists(),
        )
    ))
    if not candidates:
        return 0
    tasks = session.execute(
        select(Job.workflow_id, Job.status, Job.attempts, Job.attempt_base)
        .where(Job.workflow_id.in_(candidates)).order_by(Job.id).with_for_update()
    ).all()
    started = {row.workflow_id for row in tasks
               if row.status not in graph.NOT_STARTED or row.attempts != row.attempt_base}
    pristine = sorted(set(candidates) - started)
    if not pristine:
        return 0
    runs = dict(session.execute(select(Workflow.id, Workflow.runs).where(Workflow.id.in_(pristine))).all())
    fresh = [workflow_id for workflow_id in pristine if runs.get(workflow_id) == 1]
    if fresh:
        session.execute(delete(Job).where(Job.workflow_id.in_(fresh)).execution_options(synchronize_session=False))
        session.execute(delete(Workflow).where(Workflow.id.in_(fresh)).execution_options(synchronize_session=False))
    rerun = [workflow_id for workflow_id in pristine if runs.get(workflow_id, 1) > 1]
    if rerun:
        locked = session.scalars(select(Workflow).where(Workflow.id.in_(rerun)).order_by(Workflow.id).with_for_update())
        for workflow in locked:
            workflows.cancel(session, workflow, now=now)
    return len(fresh) + len(rerun)


def pause(session: Session, schedule: Schedule, *, now: datetime) -> int:
    """Stop ``schedule``: no occurrence is made while it is paused, and the ones made ahead
    that have not started are taken back (:func:`withdraw`). Returns how many."""
    if schedule.paused:
        return 0
    schedule.paused = True
    schedule.paused_at = now
    schedule.next_fire_at = None
    schedule.updated_at = now
    return withdraw(session, schedule, now=now)


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a schedule as shown: a job, or a workflow (``started_at``: its first
    task's start)."""

    id: uuid.UUID
    kind: str  # "job" or "workflow"
    status: str
    scheduled_for: datetime
    execute_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _first_starts(session: Session, workflow_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When each workflow's first task started (workflows with none started left out)."""
    if not workflow_ids:
        return {}
    return dict(session.execute(
        select(Job.workflow_id, func.min(Job.started_at))
        .where(Job.workflow_id.in_(workflow_ids), Job.started_at.is_not(None))
        .group_by(Job.workflow_id)
    ).all())


def last_occurrences(session: Session, schedule_ids: Iterable[uuid.UUID], *, now: datetime
                     ) -> dict[uuid.UUID, Occurrence]:
    """The latest occurrence (job or workflow) of each schedule that has fallen due by
    ``now``, by schedule."""
    ids = list(schedule_ids)
    if not ids:
        return {}
    found: dict[uuid.UUID, Occurrence] = {}
    for table, kind in ((Job, "job"), (Workflow, "workflow")):
        latest = (
            select(table.schedule_id, func.max(table.scheduled_for).label("at"))
            .where(table.schedule_id.in_(ids), table.execute_at <= now)
            .group_by(table.schedule_id)
            .subquery()
        )
        # A workflow's start is its first task's, read below.
        started = Job.started_at if table is Job else null().label("started_at")
        rows = session.execute(
            select(table.id, table.schedule_id, table.status, table.scheduled_for, table.execute_at, started,
                   table.finished_at)
            .join(latest, (table.schedule_id == latest.c.schedule_id) & (table.scheduled_for == latest.c.at))
        ).all()
        starts = _first_starts(session, [row.id for row in rows]) if kind == "workflow" else {}
        for row in rows:
            current = found.get(row.schedule_id)
            if current is not None and ensure_aware(current.scheduled_for) >= ensure_aware(row.scheduled_for):
                continue
            found[row.schedule_id] = Occurrence(
                id=row.id, kind=kind, status=row.status, scheduled_for=row.scheduled_for, execute_at=row.execute_at,
                started_at=row.started_at if kind == "job" else starts.get(row.id), finished_at=row.finished_at,
            )
    return found


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def figures(session: Session, schedule_id: uuid.UUID, *, over: int = FIGURES_OVER) -> dict[str, Any]:
    """On-time figures of the last ``over`` finished occurrences (jobs and workflows): counts
    by outcome, and the lateness of their first attempt's start (a workflow's: of any of its
    tasks) after the occurrence's time (p50, p99, max, ms)."""
    jobs = session.execute(
        select(Job.id, Job.status, Job.execute_at, Job.scheduled_for)
        .where(Job.schedule_id == schedule_id, Job.finished_at.is_not(None))
        .order_by(Job.scheduled_for.desc())
        .limit(over)
    ).all()
    flows = session.execute(
        select(Workflow.id, Workflow.status, Workflow.execute_at, Workflow.scheduled_for)
        .where(Workflow.schedule_id == schedule_id, Workflow.finished_at.is_not(None))
        .order_by(Workflow.scheduled_for.desc())
        .limit(over)
    ).all()
    last = sorted([*jobs, *flows], key=lambda row: ensure_aware(row.scheduled_for), reverse=True)[:over]
    by_status: dict[str, int] = {}
    for row in last:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    job_ids = [row.id for row in jobs]
    starts = dict(session.execute(
        select(JobAttempt.job_id, func.min(JobAttempt.started_at))
        .where(JobAttempt.job_id.in_(job_ids))
        .group_by(JobAttempt.job_id)
    ).all()) if job_ids else {}
    flow_ids = [row.id for row in flows]
    if flow_ids:
        starts.update(session.execute(
            select(Job.workflow_id, func.min(JobAttempt.started_at))
            .join(Job, Job.id == JobAttempt.job_id)
            .where(Job.workflow_id.in_(flow_ids))
            .group_by(Job.workflow_id)
        ).all())
    lateness = [
        (ensure_aware(starts[row.id]) - ensure_aware(row.execute_at)).total_seconds() * 1000
        for row in last if starts.get(row.id) is not None
    ]
    rounded = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {
        "occurrences": len(last),
        "by_status": by_status,
        "lateness_ms": {
            "p50": rounded(percentile(lateness, 0.50)),
            "p99": rounded(percentile(lateness, 0.99)),
            "max": rounded(max(lateness)) if lateness else None,
            "measured": len(lateness),
        },
    }
