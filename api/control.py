"""Job control: run a job now (trigger), run a finished job again (rerun), change a job that has
not started (PATCH), and rerun every finished job a filter matches (redrive).

Each view reads the job (a job of another tenant is a 404, like one that does not exist),
refuses what the caller may not do (403 ``shell`` jobs for non-admins; 429 over the tenant's
pending quota for a rerun), then makes its change with one compare-and-set UPDATE
(:mod:`common.core.control`): a job whose status changed meanwhile is a 409 naming the status
it has. The change moves the job's dispatch token on (fencing: a dispatch an executor already
holds can no longer start) and the job is dispatched again right away, in the same transaction,
the way a create dispatches a job due soon (:mod:`api.create`): claimed with
``store.claim_ids``, published after the commit by :func:`api.publish.publisher`, and handed
back to the scanner (SCHEDULED) if Kafka does not take it."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Callable

from flask.views import MethodView
from flask_smorest import abort
from marshmallow import ValidationError

from common.core import control, store
from common.core.messages import DispatchMessage
from common.core.models import Job
from common.core.roles import Role
from common.core.windows import needs_direct_dispatch
from common.infra.clock import ensure_aware, isoformat
from common.infra.db import session_scope
from common.infra.errors import JobNotFound

from api.audit import note
from api.auth import principal, requires
from api.context import Runtime, request_now, runtime
from api.control_schemas import JobPatchSchema, RedriveResultSchema, RedriveSchema, check_payload
from api.jobs import job_id_of, may_run
from api.parsing import json_blueprint
from api.publish import publisher
from api.schemas import JobSchema

log = logging.getLogger(__name__)

blp = json_blueprint(
    "job_control", __name__, url_prefix="/api/jobs",
    description="Run a job now, run a finished job again, change a job before it starts, redrive failures.",
)

_NOT_FOUND = "No such job (or another tenant's)."
_SHELL = "A shell job, and the caller is not an admin."


def _found(session: Any, job_id: uuid.UUID, *, lock: bool = False) -> Any:
    """The job of the caller's tenant (any, for admins), or 404; 403 for a shell job and a caller
    who may not run one."""
    job = control.find(session, job_id, tenant=principal().tenant_scope, lock=lock)
    if job is None:
        raise JobNotFound(job_id)
    refused = may_run(job.type)
    if refused is not None:
        abort(403, message=f"Job '{job_id}' is a {job.type} job: {refused}")
    return job


def _conflict(job_id: uuid.UUID, status: str | None, action: str, allowed: tuple[str, ...]) -> None:
    """Answer 409 naming the status that refused ``action`` (404 if the job went away)."""
    if status is None:
        raise JobNotFound(job_id)
    reason = f"is {status}; only a job that is {' or '.join(allowed)} can be {action}"
    abort(409, message=f"Job '{job_id}' {reason}", errors={"status": [reason]})


def _claim(rt: Runtime, session: Any, ids: list[uuid.UUID], now: datetime) -> list[DispatchMessage]:
    """Claim the jobs just made SCHEDULED, in the same transaction, as a create claims a job due
    soon; their messages are published after the commit (:func:`_publish`)."""
    claimed = store.claim_ids(session, ids, now=now, lease=rt.settings.lease_seconds)
    for job_id in claimed.exhausted:  # not for a rerun (a new run has all its attempts)
        log.warning("job %s FAILED on its re-dispatch: no retries left", job_id)
    return claimed.messages


def _publish(messages: list[DispatchMessage]) -> None:
    """Publish claimed dispatches without waiting for Kafka; those it refuses go back to the
    scanner (SCHEDULED), as a create's do."""
    for job_id in publisher().publish(messages):
        log.warning("job %s: its dispatch was not published; the scanner dispatches it", job_id)


def _change_now(rt: Runtime, job_id: uuid.UUID, now: datetime, change: Callable[[Any], control.Outcome],
                action: str, allowed: tuple[str, ...]) -> Job:
    """Make ``change`` (a compare-and-set that leaves the job SCHEDULED, due now) and dispatch
    the job in the same transaction; 409 naming the status that refused it. Returns the job
    as stored after its dispatch was published."""
    with session_scope(rt.settings) as session:
        outcome = change(session)
        if not outcome.done:
            _conflict(job_id, outcome.status, action, allowed)
        messages = _claim(rt, session, [job_id], now)
    _publish(messages)
    return _current(rt, job_id)


def _current(rt: Runtime, job_id: uuid.UUID) -> Job:
    """The job as stored after the change and its dispatch."""
    with session_scope(rt.settings) as session:
        job = session.get(Job, job_id)
        if job is None:  # deleted meanwhile (retention, or a test)
            raise JobNotFound(job_id)
        session.expunge(job)
        return job


@blp.route("/<job_id>/trigger")
class TriggerView(MethodView):
    @requires(Role.WRITER)
    @blp.response(200, JobSchema)
    @blp.alt_response(403, description=_SHELL, success=False)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    @blp.alt_response(409, description="The job is not SCHEDULED or QUEUED (the answer names its status).",
                      success=False)
    def post(self, job_id: str) -> Any:
        """Run a job now instead of at its time.

        The job keeps its id; its ``execute_at`` becomes now, and the time it had is kept in
        ``original_execute_at`` (the first one, if it is triggered again). It is dispatched at
        once. A QUEUED job, whose dispatch an executor may already hold, gets a new dispatch
        token first: that old dispatch can no longer start, so the job runs once, now. Only a
        SCHEDULED or QUEUED job can be triggered: any other status is a 409 naming it.
        """
        note("jobs.trigger", "job", job_id)
        uid, rt, now = job_id_of(job_id), runtime(), request_now()

        def trigger(session: Any) -> control.Outcome:
            _found(session, uid)
            return control.trigger(session, uid, now=now, tenant=principal().tenant_scope)

        return _change_now(rt, uid, now, trigger, "triggered", control.NOT_STARTED)


@blp.route("/<job_id>/rerun")
class RerunView(MethodView):
    @requires(Role.WRITER)
    @blp.response(200, JobSchema)
    @blp.alt_response(403, description=_SHELL, success=False)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    @blp.alt_response(409, description="The job has not finished (the answer names its status).", success=False)
    @blp.alt_response(429, description="Over the tenant's limit of unfinished jobs or of creates per second.",
                      success=False)
    def post(self, job_id: str) -> Any:
        """Run a finished job again, now, as a new run of the same job.

        A SUCCESS, FAILED, CANCELLED or SKIPPED job becomes SCHEDULED and is dispatched at
        once. The new run has ``1 + max_retries`` attempts of its own; its attempts are numbered
        on from the last one (a job that made 4 attempts starts the rerun with attempt 5), so
        the history of earlier runs stays in ``/attempts``, and ``runs`` counts the runs.
        ``finished_at``, ``output`` and ``error`` are cleared; ``original_execute_at`` keeps
        the job's first time. A rerun counts against the tenant's limit of unfinished jobs
        (429). A job that has not finished is a 409 naming its status; so is a workflow's task
        (rerun its workflow instead).
        """
        note("jobs.rerun", "job", job_id)
        uid, rt, now = job_id_of(job_id), runtime(), request_now()
        with session_scope(rt.settings) as session:
            job = _found(session, uid)
        if job.status not in control.FINISHED:
            _conflict(uid, job.status, "rerun", control.FINISHED)
        if job.workflow_id is not None:
            reason = (f"is a task of workflow {job.workflow_id}: rerun the workflow "
                      f"(POST /api/workflows/{job.workflow_id}/rerun), which reruns its failed tasks in order")
            abort(409, message=f"Job '{uid}' {reason}", errors={"workflow_id": [reason]})
        # Outside the change's transaction: the quota reads (and may write) in its own, which
        # on SQLite would wait for this one's lock.
        rt.quotas.admit(job.tenant, 1)
        return _change_now(rt, uid, now, lambda session: control.rerun(session, uid, now=now,
                                                                          tenant=principal().tenant_scope),
                           "rerun", control.FINISHED)


@blp.route("/<job_id>")
class JobUpdateView(MethodView):
    @requires(Role.WRITER)
    @blp.arguments(JobPatchSchema())
    @blp.response(200, JobSchema)
    @blp.alt_response(403, description=_SHELL, success=False)
    @blp.alt_response(404, description=_NOT_FOUND, success=False)
    @blp.alt_response(409, description="The job has started or finished (the answer names its status).",
                      success=False)
    def patch(self, fields: dict[str, Any], job_id: str) -> Any:
        """Change a job that has not started: its time, payload, retries, timeout, priority or metadata.

        Only a SCHEDULED or QUEUED job can be changed (any other status is a 409 naming it),
        and each field is checked exactly as a create checks it (422 naming the field; a field
        that cannot be changed, such as ``name`` or ``type``, or an unknown one, is a 422 too).
        ``payload`` and ``metadata`` replace the stored ones whole; in a payload, a secret
        value sent back as ``"***"`` (as this API shows it) keeps the stored secret. A new
        ``execute_at`` (or ``delay_seconds``) may not be in the past; the job's first time is
        kept in ``original_execute_at``. A QUEUED job gets a new dispatch token, so the
        dispatch an executor may already hold can no longer start, and it is dispatched again:
        at once if its time is before the scanner's next pass, else by the scanner.
        """
        note("jobs.update", "job", job_id, fields=sorted(fields))
        uid, rt, now = job_id_of(job_id), runtime(), request_now()
        changes = dict(fields)  # by the Job attributes they set (metadata is "meta")
        messages: list[DispatchMessage] = []
        with session_scope(rt.settings) as session:
            job = _found(session, uid, lock=True)
            if job.status not in control.NOT_STARTED:
                _conflict(uid, job.status, "changed", control.NOT_STARTED)
            _check(rt, job, changes)
            outcome = control.update_job(session, uid, changes, now=now, attempts=job.attempts,
                                         tenant=principal().tenant_scope)
            if not outcome.done:
                _conflict(uid, outcome.status, "changed", control.NOT_STARTED)
            row = outcome.row
            fire_at = max(ensure_aware(row.execute_at), ensure_aware(row.next_attempt_at or row.execute_at))
            if needs_direct_dispatch(fire_at, now, rt.settings.scan_interval_seconds):
                messages = _claim(rt, session, [uid], now)
            else:
                log.info("job %s: due %s, after the scanner's next pass; the scanner dispatches it",
                         uid, isoformat(fire_at))
        _publish(messages)
        return _current(rt, uid)


def _check(rt: Runtime, job: Any, changes: dict[str, Any]) -> None:
    """The rules of a change that need the stored job: the payload against its type (sealed,
    stored secrets kept), and retries not below the attempts its current run already made."""
    errors: dict[str, Any] = {}
    if "payload" in changes:
        try:
            changes["payload"] = check_payload(job.type, changes["payload"], job.payload, rt.settings, rt.keyring)
        except ValidationError as exc:
            errors["payload"] = exc.messages
    made = job.attempts - job.attempt_base
    if "max_retries" in changes and changes["max_retries"] + 1 <= made:
        errors["max_retries"] = [
            f"the job's current run already made {made} attempts; max_retries must be at least {made} "
            "for the next one to run"]
    if errors:
        abort(422, message="The request is invalid; see errors.", errors={"json": errors})


@blp.route("/rerun")
class RedriveView(MethodView):
    @requires(Role.WRITER)
    @blp.arguments(RedriveSchema())
    @blp.response(200, RedriveResultSchema)
    @blp.alt_response(403, description="A tenant other than the caller's, or type shell, and the caller is "
                                       "not an admin.", success=False)
    @blp.alt_response(413, description="More jobs than the tenant may rerun in one request "
                                       "(its max_batch_jobs): lower limit.", success=False)
    @blp.alt_response(429, description="Over the tenant's limit of unfinished jobs or of creates per second.",
                      success=False)
    def post(self, args: dict[str, Any]) -> Any:
        """Rerun every finished job a filter matches (redrive), oldest finished first.

        Each matching job is rerun as ``POST /api/jobs/{id}/rerun`` would (a new run, its
        history kept) and dispatched at once, a thousand jobs per transaction. ``status``
        (default FAILED) always applies, so an empty body reruns the caller's FAILED jobs;
        ``type``, ``name``, ``schedule_id``, ``finished_after``/``finished_before`` and
        ``execute_after``/``execute_before`` narrow the set. At most ``limit`` jobs are rerun
        (default and most: the tenant's max_batch_jobs); ``more`` says whether matching jobs
        were left: send the same filter again with the ``finished_before`` of the answer to go
        on (a job rerun here that fails again is then not picked up twice). ``dry_run`` only
        counts. A non-admin's redrive leaves ``shell`` jobs alone (only admins may run them).
        The jobs count against the tenant's limit of unfinished jobs and of creates
        per second (429, nothing rerun). Admins may name a ``tenant``; without one they
        redrive every tenant's jobs.
        """
        rt, caller, now = runtime(), principal(), request_now()
        detail = {key: isoformat(v) if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v
                  for key, v in args.items()}
        note("jobs.redrive", "job", None, **detail)
        scope = caller.tenant_scope
        tenant = args.pop("tenant", None)
        if scope is not None and tenant not in (None, scope):
            abort(403, message=f"only admins may redrive another tenant's jobs (the credential is of {scope!r})",
                  errors={"json": {"tenant": [f"must be your own tenant, {scope!r}, or left out"]}})
        refused = may_run(args.get("type", ""))
        if refused is not None:
            abort(403, message=f"shell jobs cannot be rerun by this credential: {refused}",
                  errors={"json": {"type": [refused]}})
        bound = min(args["finished_before"], now) if "finished_before" in args else now
        where = control.RedriveFilter(
            finished_before=bound, tenant=scope if scope is not None else tenant, statuses=tuple(args["status"]),
            # A redrive by a non-admin leaves shell jobs alone (only admins may run them).
            exclude_type=None if may_run("shell") is None else "shell",
            **{key: args.get(key) for key in ("type", "name", "schedule_id", "finished_after", "execute_after",
                                               "execute_before")},
        )
        with session_scope(rt.settings) as session:
            matched = control.count_matching(session, where)
        if not matched:
            return _redrive_answer(0, 0, False, bound, args["dry_run"])
        # Each tenant's share is admitted before anything changes, outside any transaction of
        # this request (the quotas read, and may write, in their own: on SQLite one would wait
        # for the other's lock).
        if where.tenant is not None:
            limit = args.get("limit") or rt.quotas.limits(where.tenant).max_batch
            shares = {where.tenant: limit}
        else:
            limit = args.get("limit") or rt.settings.tenant_max_batch_jobs
            with session_scope(rt.settings) as session:
                shares = control.matching_by_tenant(session, where, limit=limit)
        _admit_redrive(rt, shares, matched, dry_run=args["dry_run"])
        if args["dry_run"]:
            return _redrive_answer(0, matched, matched > limit, bound, True)
        rerun = _redrive(rt, where, limit)
        more = rerun >= limit and _any_left(rt, where)
        log.info("redrive by %s: %d of %d matching jobs rerun%s", caller.subject, rerun, matched,
                 "; more are left" if more else "")
        note("jobs.redrive", "job", None, **detail, matched=matched, rerun=rerun)
        return _redrive_answer(rerun, matched, more, bound, False)


def _admit_redrive(rt: Runtime, shares: dict[str, int], matched: int, *, dry_run: bool) -> None:
    """Let each tenant's share of a redrive in (``limit`` for one tenant, its count of the jobs
    to rerun for an admin's redrive of every tenant): 413 when that is more than the tenant's
    batch size (max_batch_jobs), 429 over its unfinished jobs or its creates per second. A dry
    run is only checked against the batch size."""
    for tenant, share in shares.items():
        batch = rt.quotas.limits(tenant).max_batch
        if share > batch:
            abort(413, message=f"tenant {tenant!r} may have at most {batch:,} jobs rerun per request "
                               "(its max_batch_jobs); lower limit or narrow the filter",
                  errors={"json": {"limit": [f"must be at most {batch:,} for tenant {tenant!r}"]}})
    if not dry_run:
        for tenant, share in shares.items():
            count = min(share, matched)
            if count:
                rt.quotas.admit(tenant, count)


def _redrive(rt: Runtime, where: control.RedriveFilter, limit: int) -> int:
    """Rerun up to ``limit`` matching jobs, :data:`control.REDRIVE_BATCH` per transaction, each
    batch claimed in its transaction and published after its commit."""
    done = 0
    while done < limit:
        size = min(control.REDRIVE_BATCH, limit - done)
        now = request_now()
        with session_scope(rt.settings) as session:
            batch = control.redrive_batch(session, where, now=now, size=size)
            messages = _claim(rt, session, batch.rerun, now) if batch.rerun else []
        _publish(messages)
        done += len(batch.rerun)
        if batch.picked < size:
            break  # nothing more matches
    return done


def _any_left(rt: Runtime, where: control.RedriveFilter) -> bool:
    with session_scope(rt.settings) as session:
        return control.any_matching(session, where)


def _redrive_answer(rerun: int, matched: int, more: bool, bound: datetime, dry_run: bool) -> dict[str, Any]:
    return {"rerun": rerun, "matched": matched, "more": more, "finished_before": bound, "dry_run": dry_run}
