"""GET /api/overview: the dashboard's figures in one call — jobs by status, jobs due in each of
the next minutes, lateness of the last minutes' starts, and the dead-letter topic's size."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from common.core import overview
from common.core.roles import Role
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import BrokerUnavailable
from common.infra.kafka import topic_size

from api import queries
from api.auth import principal, requires
from api.context import request_now, runtime
from api.schedule_schemas import LatenessSchema
from api.schemas import UtcDateTime

log = logging.getLogger(__name__)

blp = Blueprint("overview", __name__, url_prefix="/api/overview", description="The dashboard's figures.")

#: Seconds a dead-letter count (or the failure to get one) is reused: reading offsets costs a
#: broker connection, and a dashboard polls.
DLQ_CACHE_SECONDS = 10.0
#: How long reading the offsets may take before the count is reported unavailable.
DLQ_TIMEOUT_MS = 2000


class OverviewQuerySchema(Schema):
    due_minutes = fields.Integer(load_default=10, validate=validate.Range(min=1, max=60),
                                 metadata={"description": "How many minutes ahead to count due jobs (1-60)."})
    lateness_minutes = fields.Integer(load_default=5, validate=validate.Range(min=1, max=60),
                                      metadata={"description": "How many minutes back to measure lateness (1-60)."})


class OverviewDueMinuteSchema(Schema):
    start = UtcDateTime(metadata={"description": "Start of the minute."})
    count = fields.Integer(metadata={"description": "SCHEDULED or QUEUED jobs due in it."})


class OverviewLatenessSchema(LatenessSchema):
    measured = fields.Integer(metadata={"description": "Runs due in the window whose first attempt has started."})


class OverviewDeadLettersSchema(Schema):
    topic = fields.String(allow_none=True)
    count = fields.Integer(allow_none=True, metadata={"description": "Messages in the dead-letter topic; null "
                                                                     "when unknown (see note)."})
    note = fields.String(allow_none=True, metadata={"description": "Why the count is null."})


class OverviewSchema(Schema):
    at = UtcDateTime(metadata={"description": "The time the figures were read."})
    total = fields.Integer()
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "Every status."})
    overdue = fields.Integer(metadata={"description": "SCHEDULED jobs whose execute_at has passed."})
    due = fields.List(fields.Nested(OverviewDueMinuteSchema), metadata={"description": "One item per minute from now."})
    lateness_minutes = fields.Integer()
    lateness_ms = fields.Nested(OverviewLatenessSchema, metadata={
        "description": "First attempt's start minus due time of the runs due in the last lateness_minutes that have started (the latest 10,000 at most)."})
    dead_letters = fields.Nested(OverviewDeadLettersSchema)


class _DeadLetterCount:
    """The dead-letter topic's size, read from the broker at most every DLQ_CACHE_SECONDS per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: dict[tuple[str, str], tuple[float, int | None, str | None]] = {}

    def get(self, settings: Settings) -> tuple[int | None, str | None]:
        key = (settings.kafka_bootstrap, settings.topic_dlq)
        with self._lock:  # one reader at a time: the others get its answer
            hit = self._cached.get(key)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1], hit[2]
            try:
                count, note = topic_size(settings, settings.topic_dlq, timeout_ms=DLQ_TIMEOUT_MS), None
            except BrokerUnavailable as exc:
                log.warning("overview: dead-letter count unavailable: %s", exc)
                count, note = None, "the broker did not answer; try again shortly"
            self._cached[key] = (time.monotonic() + DLQ_CACHE_SECONDS, count, note)
            return count, note


_DEAD_LETTERS = _DeadLetterCount()


@blp.route("")
class OverviewView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(OverviewQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, OverviewSchema)
    def get(self, due_minutes: int, lateness_minutes: int) -> dict[str, Any]:
        """Counts by status, jobs due in each of the next ``due_minutes`` minutes, the p50/p99
        lateness of the runs due in the last ``lateness_minutes``, and (admins) the number of
        messages in the dead-letter topic. A caller sees its own tenant's jobs; an admin every
        tenant's."""
        rt, scope, now = runtime(), principal().tenant_scope, request_now()
        with session_scope(rt.settings) as session:
            stats = queries.job_stats(session, now=now, tenant=scope)
            due = overview.due_per_minute(session, now=now, minutes=due_minutes, tenant=scope)
            late = overview.lateness(session, now=now, minutes=lateness_minutes, tenant=scope)
        if scope is None:
            count, note = _DEAD_LETTERS.get(rt.settings)
        else:
            # The topic holds every tenant's failures: its size is not one tenant's to see.
            count, note = None, "admins only: the dead-letter topic holds every tenant's messages"
        return {"at": now, "total": stats["total"], "by_status": stats["by_status"], "overdue": stats["overdue"],
                "due": due, "lateness_minutes": lateness_minutes, "lateness_ms": late,
                "dead_letters": {"topic": rt.settings.topic_dlq if scope is None else None, "count": count,
                                 "note": note}}
