"""Creating jobs, one at a time or in batches: the idempotent, set-based insert, and the direct
dispatch of jobs due too soon for the scanner (on time even when created seconds before they are
due; README, "What chronoq guarantees").

A job due before the scanner's next horizon is stored already claimed (QUEUED, leased) in the
same transaction as its insert, then published after the commit; whatever Kafka does not take is
handed back to the scanner (:mod:`api.publish`)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, TypeVar

from flask import has_request_context, request
from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from common.core import store
from common.core.models import Job
from common.core.states import JobStatus
from common.core.windows import needs_direct_dispatch
from common.infra import tracing
from common.infra.clock import isoformat
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable

from api.context import Runtime
from api.errors import IdempotencyConflict
from api.publish import publisher
from api.schemas import BatchJobSchema

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a batch is tried again after a concurrent request stored one of its idempotency
#: keys between the batch's lookup and its insert (each try sees more of them).
KEY_RACE_TRIES = 3


def request_hash(body: Any) -> str:
    """sha256 of the body as canonical JSON (sorted keys, no spaces), so that a repeat with
    the keys in another order or other whitespace counts as the same request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _new_job(
    fields: dict[str, Any], tenant: str, idempotency_key: str | None, body_hash: str | None,
    trace: dict[str, str] | None = None,
) -> dict[str, Any]:
    job = {
        "id": uuid.uuid4(), "tenant": tenant, "idempotency_key": idempotency_key,
        "request_hash": body_hash if idempotency_key else None, **fields,
    }
    if trace:
        job["trace_context"] = trace
    return job


def _incoming_trace() -> dict[str, str] | None:
    """The request's own ``traceparent`` (and ``tracestate``), the parent of a create's span."""
    return tracing.carrier_of_headers(request.headers.items()) if has_request_context() else None


def _store(rt: Runtime, session: Any, jobs: list[dict[str, Any]], now: datetime) -> list[Any]:
    """Insert ``jobs``, those due before the scanner's next horizon already claimed."""
    interval = rt.settings.scan_interval_seconds
    claim = [needs_direct_dispatch(job["execute_at"], now, interval) for job in jobs]
    return store.add_jobs(session, jobs, claim=claim, now=now, lease=rt.settings.lease_seconds)


@dataclass(frozen=True)
class Created:
    """A create's outcome: the job to show (a stored row or a :class:`Job`) and whether it is new."""

    job: Any
    id: uuid.UUID
    new: bool


def create_job(
    rt: Runtime, fields: dict[str, Any], *, tenant: str, now: datetime, idempotency_key: str | None,
    body_hash: str | None,
) -> Created:
    """Store a job of ``tenant`` from validated ``fields`` and dispatch it if it is due soon.
    With an ``idempotency_key`` the tenant already used for the same body the first job is
    returned instead; for a different body, :class:`IdempotencyConflict`. With tracing on, in
    a "create job" span (a child of the request's ``traceparent``) whose context the job keeps."""
    if not tracing.active():
        return _create_job(rt, fields, tenant=tenant, now=now, idempotency_key=idempotency_key, body_hash=body_hash)
    with tracing.span("create job", parent=_incoming_trace(), kind="server") as span:
        created = _create_job(rt, fields, tenant=tenant, now=now, idempotency_key=idempotency_key,
                              body_hash=body_hash, trace=tracing.inject())
        span.set_attribute("chronoq.job_id", str(created.id))
        return created


def _create_job(
    rt: Runtime, fields: dict[str, Any], *, tenant: str, now: datetime, idempotency_key: str | None,
    body_hash: str | None, trace: dict[str, str] | None = None,
) -> Created:
    job = _new_job(fields, tenant, idempotency_key, body_hash, trace)
    existing, messages = insert_once(
        rt, key=idempotency_key, body_hash=body_hash,
        find=lambda session: _by_key(session, tenant, idempotency_key),
        insert=lambda session: _store(rt, session, [job], now),
        conflict=lambda earlier: _conflict(idempotency_key, earlier, "request body"),
    )
    if existing is not None:
        return Created(existing, existing.id, False)
    rt.metrics.jobs_created.labels(job["type"]).inc()
    log.debug("job %s created: %s %r due %s", job["id"], job["type"], job["name"], job["execute_at"])
    if messages and publisher().publish(messages):
        return Created(_reread(rt, job), job["id"], True)
    return Created(job, job["id"], True)


def insert_once(
    rt: Runtime, *, key: str | None, body_hash: str | None, find: Callable[[Any], Any],
    insert: Callable[[Any], T], conflict: Callable[[Any], str],
) -> tuple[Any, T | None]:
    """A create with an optional Idempotency-Key: ``insert(session)`` unless ``find(session)``
    returns what the tenant already stored under ``key``. Returns (that earlier object, None) or
    (None, what ``insert`` returned). Two identical requests racing past the lookup meet at the
    key's unique index: the loser's insert fails and it finds the winner's. The same key with
    another body is :class:`IdempotencyConflict` (``conflict(earlier id)`` says so)."""
    inserted: T | None = None
    try:
        with session_scope(rt.settings) as session:
            existing = find(session) if key else None
            if existing is None:
                inserted = insert(session)
    except IntegrityError:
        if not key:
            raise
        with session_scope(rt.settings) as session:
            existing = find(session)
        if existing is None:
            raise
    if existing is not None and existing.request_hash != body_hash:
        raise IdempotencyConflict(conflict(existing.id))
    return existing, inserted


def _conflict(key: str | None, job_id: uuid.UUID, what: str) -> str:
    return (f"Idempotency-Key {key!r} was already used with a different {what} (job {job_id}); "
            "use a new key for a new job")


def _by_key(session: Any, tenant: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))


def _reread(rt: Runtime, job: dict[str, Any]) -> Any:
    """The job as stored now (its dispatch was handed back), or as inserted if the database
    cannot say."""
    try:
        with session_scope(rt.settings) as session:
            return session.get(Job, job["id"]) or job
    except DatabaseUnavailable as exc:
        log.warning("job %s: could not re-read it after its direct dispatch: %s", job["id"], exc)
        return job


# --- batches ------------------------------------------------------------------------------


@dataclass
class _Answer:
    code: int
    job: dict[str, Any] | None = None  # the job of a 200 or 201, as stored
    errors: dict[str, Any] | None = None


def create_batch(
    rt: Runtime, items: list[Any], *, tenant: str, now: datetime, may_run: Callable[[str], str | None],
) -> dict[str, Any]:
    """:func:`_create_batch`; with tracing on, in one "create jobs" span (a child of the
    request's ``traceparent``) whose context every job of the batch keeps."""
    if not tracing.active():
        return _create_batch(rt, items, tenant=tenant, now=now, may_run=may_run)
    with tracing.span("create jobs", parent=_incoming_trace(), kind="server",
                      attributes={"chronoq.jobs": len(items)}):
        return _create_batch(rt, items, tenant=tenant, now=now, may_run=may_run, trace=tracing.inject())


def _create_batch(
    rt: Runtime, items: list[Any], *, tenant: str, now: datetime, may_run: Callable[[str], str | None],
    trace: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create the valid ``items`` (each checked like a single create, with an optional
    ``idempotency_key``) for ``tenant`` in one transaction, dispatch those due soon, and answer
    per item in request order: ``{"created", "existing", "failed", "items": [{"index", "code",
    "job" | "errors"}]}``. ``may_run(type)`` says why the caller may not create a job of that
    type (its item is then a 403), or None."""
    # Given the settings, not finding them in the app for every rule of every item.
    schema = BatchJobSchema(settings=rt.settings)
    answers: list[_Answer | None] = [None] * len(items)
    pending: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            fields = schema.load(item)
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            answers[index] = _Answer(422, errors=errors)
            continue
        refused = may_run(fields["type"])
        if refused is not None:
            answers[index] = _Answer(403, errors={"type": [refused]})
            continue
        key = fields.pop("idempotency_key", None)
        # Hashed without its key, like a single create's body: the same job sent either way
        # with the same key is one job.
        body_hash = request_hash({k: v for k, v in item.items() if k != "idempotency_key"}) if key else None
        pending.append((index, _new_job(fields, tenant, key, body_hash, trace)))

    keys = {job["idempotency_key"] for _, job in pending if job["idempotency_key"]}
    fresh: list[dict[str, Any]] = []
    messages: list[Any] = []
    for attempt in range(1, KEY_RACE_TRIES + 1):
        try:
            with session_scope(rt.settings) as session:
                found = _by_keys(session, tenant, keys)
                fresh = _resolve_keys(pending, found, answers)
                messages = _store(rt, session, fresh, now)
            break
        except IntegrityError:
            if not keys or attempt == KEY_RACE_TRIES:
                raise
            log.info("batch: a concurrent request stored one of its idempotency keys; looking them up again")

    if messages:
        put_back = publisher().publish_and_wait(messages)
        for job in fresh:
            if job["id"] in put_back:
                job.update(status=JobStatus.SCHEDULED.value, lease_until=None)
    for job_type, count in Counter(job["type"] for job in fresh).items():
        rt.metrics.jobs_created.labels(job_type).inc(count)
    log.debug("batch of %d: %d created (%d due soon)", len(items), len(fresh), len(messages))
    return _batch_result(answers)


def _by_keys(session: Any, tenant: str, keys: set[str]) -> dict[str, Any]:
    """The tenant's stored jobs of these idempotency keys: key → (id, request_hash, status,
    execute_at)."""
    if not keys:
        return {}
    query = select(Job.idempotency_key, Job.id, Job.request_hash, Job.status, Job.execute_at)
    where = (Job.tenant == tenant, Job.idempotency_key.in_(keys))
    return {row.idempotency_key: row for row in session.execute(query.where(*where))}


def _resolve_keys(
    pending: Iterable[tuple[int, dict[str, Any]]], found: dict[str, Any], answers: list[_Answer | None]
) -> list[dict[str, Any]]:
    """Answer the items whose idempotency key is taken (by a stored job, or by an earlier item
    of this batch) and return the jobs to insert."""
    fresh: list[dict[str, Any]] = []
    first: dict[str, dict[str, Any]] = {}
    for index, job in pending:
        key = job["idempotency_key"]
        earlier = found.get(key) if key else None
        if earlier is not None:
            earlier_job = {"id": earlier.id, "status": earlier.status, "execute_at": earlier.execute_at}
            answers[index] = _repeat(key, job, earlier.request_hash, earlier_job)
        elif key in first:
            answers[index] = _repeat(key, job, first[key]["request_hash"], first[key])
        else:
            if key:
                first[key] = job
            answers[index] = _Answer(201, job=job)
            fresh.append(job)
    return fresh


def _repeat(key: str, job: dict[str, Any], earlier_hash: str | None, earlier: dict[str, Any]) -> _Answer:
    if earlier_hash == job["request_hash"]:
        return _Answer(200, job=earlier)
    return _Answer(409, errors={"idempotency_key": [_conflict(key, earlier["id"], "job")]})


def _batch_result(answers: list[_Answer | None]) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    codes: Counter[int] = Counter()
    for index, answer in enumerate(answers):
        assert answer is not None  # every item was answered above
        codes[answer.code] += 1
        if answer.job is not None:
            job = answer.job
            ref = {"id": job["id"], "status": job["status"], "execute_at": isoformat(job["execute_at"])}
            items.append({"index": index, "code": answer.code, "job": ref})
        else:
            items.append({"index": index, "code": answer.code, "errors": answer.errors})
    return {"created": codes[201], "existing": codes[200], "failed": codes[403] + codes[409] + codes[422],
            "items": items}
