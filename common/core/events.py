"""Job state changes (``job_events``, written by database triggers): the queries that read and
prune them, and the pure logic of a live stream — which events a client asked for
(:class:`EventFilter`), and which ids may still appear below the newest one read
(:class:`GapTracker`).

Why gaps: on PostgreSQL an id is taken from a sequence when the row is inserted, not when its
transaction commits. A reader can see id 42 while 41 is still uncommitted; 41 appears later,
or never (its transaction rolled back). A stream that only asked for ``id > newest`` would skip
it for ever, so the ids missing below the newest one read are asked for again until they appear
or have been missing for ``wait`` seconds."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from common.core.models import JobEvent
from common.infra.clock import ensure_aware, isoformat


@dataclass(frozen=True)
class Event:
    """One job state change, detached from the database."""

    id: int
    job_id: uuid.UUID
    tenant: str
    status: str
    previous_status: str | None
    attempt: int
    schedule_id: uuid.UUID | None
    name: str
    type: str
    at: datetime

    @classmethod
    def of(cls, row: Any) -> "Event":
        return cls(id=row.id, job_id=row.job_id, tenant=row.tenant, status=row.status,
                   previous_status=row.previous_status, attempt=row.attempt, schedule_id=row.schedule_id,
                   name=row.name, type=row.type, at=ensure_aware(row.at))

    def as_json(self) -> dict[str, Any]:
        """The event as a stream sends it (``data:``)."""
        return {
            "id": self.id, "job_id": str(self.job_id), "status": self.status,
            "previous_status": self.previous_status, "at": isoformat(self.at), "attempt": self.attempt,
            "schedule_id": str(self.schedule_id) if self.schedule_id is not None else None,
            "name": self.name, "type": self.type, "tenant": self.tenant,
        }


@dataclass(frozen=True)
class EventFilter:
    """What one stream receives: a tenant's events (None: every tenant's, for admins), of one job,
    of one schedule's occurrences, with these statuses (empty: all); every given part must hold."""

    tenant: str | None = None
    job_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    statuses: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        return ((self.tenant is None or event.tenant == self.tenant)
                and (self.job_id is None or event.job_id == self.job_id)
                and (self.schedule_id is None or event.schedule_id == self.schedule_id)
                and (not self.statuses or event.status in self.statuses))

    def where(self) -> list[Any]:
        """The same conditions in SQL (for a resumed stream's backlog)."""
        conditions: list[Any] = []
        if self.tenant is not None:
            conditions.append(JobEvent.tenant == self.tenant)
        if self.job_id is not None:
            conditions.append(JobEvent.job_id == self.job_id)
        if self.schedule_id is not None:
            conditions.append(JobEvent.schedule_id == self.schedule_id)
        if self.statuses:
            conditions.append(JobEvent.status.in_(sorted(self.statuses)))
        return conditions


# --- queries ------------------------------------------------------------------------------------


def latest_id(session: Session) -> int:
    """The highest event id (0: none yet)."""
    return session.scalar(select(func.max(JobEvent.id))) or 0


def present_ids(session: Session, low: int, high: int) -> list[int]:
    """The ids in ``(low, high]`` that are there (committed, not pruned)."""
    return list(session.scalars(select(JobEvent.id).where(JobEvent.id > low, JobEvent.id <= high)))


def read_new(session: Session, after: int, missing: Sequence[int], *, limit: int) -> list[Event]:
    """Up to ``limit`` events above ``after``, and any of the ``missing`` ids that appeared, in
    id order: what a poller reads each time (one statement for all its streams)."""
    condition = JobEvent.id > after
    if missing:
        condition = or_(condition, JobEvent.id.in_(list(missing)))
    return [Event.of(row) for row in session.scalars(select(JobEvent).where(condition).order_by(JobEvent.id).limit(limit))]


def read_range(session: Session, after: int, upto: int, where: EventFilter, *, limit: int) -> list[Event]:
    """Up to ``limit`` events in ``(after, upto]`` that ``where`` selects, in id order (a
    resumed stream's backlog, read page by page)."""
    query = select(JobEvent).where(JobEvent.id > after, JobEvent.id <= upto, *where.where())
    return [Event.of(row) for row in session.scalars(query.order_by(JobEvent.id).limit(limit))]


def prune_events(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the events written before ``before``, oldest first; how many."""
    ids = select(JobEvent.id).where(JobEvent.at < before).order_by(JobEvent.at).limit(limit)
    return session.execute(delete(JobEvent).where(JobEvent.id.in_(ids.scalar_subquery()))
                           .execution_options(synchronize_session=False)).rowcount


# --- pure stream logic --------------------------------------------------------------------------


@dataclass
class GapTracker:
    """Which event ids a poller has read, as ``position`` (the highest read) and the ids below it
    not read yet (``gaps``: id → monotonic time first missed). A gap is given up after ``wait``
    seconds (a rolled-back transaction leaves one for ever); at most ``max_gaps`` are kept, the
    newest."""

    position: int
    wait: float = 5.0
    max_gaps: int = 10_000
    gaps: dict[int, float] = field(default_factory=dict)

    def missing(self) -> list[int]:
        """The ids to ask for again, lowest first."""
        return sorted(self.gaps)

    def watermark(self) -> int:
        """The highest id such that every id up to it was read or given up: where a client
        can resume without losing an event this poller may still deliver."""
        return min(self.gaps) - 1 if self.gaps else self.position

    def observe(self, ids: Iterable[int], now: float) -> list[int]:
        """Record the ids read (ascending or not) at ``now``; returns those not read before (a
        poller delivers exactly these: each id once)."""
        fresh: list[int] = []
        top = self.position
        for event_id in sorted(set(ids)):
            if event_id > self.position:
                fresh.append(event_id)
                top = max(top, event_id)
            elif self.gaps.pop(event_id, None) is not None:
                fresh.append(event_id)
        seen_above = {i for i in fresh if i > self.position}
        # Only the newest max_gaps holes can be kept anyway.
        for hole in range(max(self.position + 1, top - self.max_gaps), top):
            if hole not in seen_above:
                self.gaps[hole] = now
        self.position = top
        self._bound()
        return fresh

    def expire(self, now: float) -> list[int]:
        """Give up the gaps missing for longer than ``wait``; returns them."""
        old = [i for i, since in self.gaps.items() if now - since >= self.wait]
        for event_id in old:
            del self.gaps[event_id]
        return old

    def _bound(self) -> None:
        if len(self.gaps) > self.max_gaps:
            for event_id in sorted(self.gaps)[: len(self.gaps) - self.max_gaps]:
                del self.gaps[event_id]


def sse(event: Event, resume_id: int) -> str:
    """``event`` as a server-sent event; ``resume_id`` goes in ``id:`` (what a client sends
    back as Last-Event-ID)."""
    return f"id: {resume_id}\nevent: job\ndata: {json.dumps(event.as_json(), separators=(',', ':'))}\n\n"
