"""``GET /api/events``: the live stream of job state changes (server-sent events).

The changes come from the database (``job_events``, written by triggers on ``jobs``), never from
this process's memory, so a stream sees what every API worker, scanner, executor and result
writer changed. Each API process has one :class:`Hub`: while a stream is open its poller thread
reads the new events every ``CHRONOQ_EVENTS_POLL_SECONDS`` with one query and hands each stream
the ones its filter selects. docs/events.md explains the delivery guarantees."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from typing import Any, Iterator

from flask import Response, current_app
from flask.views import MethodView
from sqlalchemy import select

from common.core import events as job_events
from common.core.events import Event, EventFilter, GapTracker
from common.core.models import Job, Schedule
from common.core.roles import Role
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable

from api.auth import principal, requires
from api.context import runtime
from api.errors import http_error
from api.event_schemas import SSE_EVENT, EventHeadersSchema, EventQuerySchema
from api.parsing import json_blueprint

log = logging.getLogger(__name__)

EXTENSION = "chronoq-events"
#: How long an id missing below the newest one read is asked for again (docs/events.md).
GAP_WAIT = 5.0
#: Ids below the newest one at a poller's start that it checks for uncommitted changes.
START_WINDOW = 1000
#: Events read per query (a poller reads again at once when it got this many).
BATCH = 1000
#: Events of a resumed stream's backlog read per query.
PAGE = 500
#: Events waiting for one slow client before its stream is ended (it resumes from the database).
MAX_QUEUE = 10_000
#: What the stream tells EventSource to wait before reconnecting, in milliseconds.
RETRY_MS = 2000
#: Seconds a refused client is told to wait (503).
RETRY_AFTER = 5

blp = json_blueprint("events", __name__, url_prefix="/api/events",
                     description="The live stream of job state changes (server-sent events).")

#: Set when this process is asked to stop (SIGTERM): its streams end at once.
STOPPING = threading.Event()
#: Longest wait of a stream between two looks at STOPPING.
_STOP_CHECK = 1.0


def _end_streams_on_sigterm() -> None:
    """In a gunicorn worker (which handles SIGTERM in Python), end the streams when it is asked
    to stop: a graceful stop waits for open requests, up to 30 s, and a stream would hold it
    for all of them. The worker's own handler then runs as before. Elsewhere (a SIGTERM left to
    the default, or an app made off the main thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or getattr(previous, "_chronoq_events", False):
        return

    def stop(signum: int, frame: Any) -> None:
        STOPPING.set()
        previous(signum, frame)

    stop._chronoq_events = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, stop)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: signal() made it interrupting


blp.record_once(lambda _state: _end_streams_on_sigterm())


class Subscription:
    """One open stream: its filter, where the poller stood when it opened (``start``: the
    highest id read; ``pending``: the ids below it still awaited), and the events waiting for it."""

    def __init__(self, where: EventFilter, start: int, mark: int, pending: frozenset[int]) -> None:
        self.where = where
        self.start = start
        self.mark = mark
        self.pending = pending
        self.overflowed = False
        self._events: list[Event] = []
        self._ready = threading.Condition()

    def offer(self, events: list[Event], mark: int) -> None:
        """The poller's hand-over: ``events`` (already filtered) and its watermark."""
        with self._ready:
            self.mark = mark
            if not events:
                return
            if len(self._events) + len(events) > MAX_QUEUE:
                self.overflowed = True
                self._events.clear()
            else:
                self._events.extend(events)
            self._ready.notify()

    def take(self, timeout: float) -> tuple[list[Event], int]:
        """The events handed over so far (waiting up to ``timeout`` for one), and the watermark."""
        with self._ready:
            if not self._events and not self.overflowed and timeout > 0:
                self._ready.wait(timeout)
            events, self._events = self._events, []
            return events, self.mark


class Hub:
    """This process's streams and the poller thread that feeds them, running only while a
    stream is open. At most ``CHRONOQ_EVENTS_MAX_STREAMS`` streams: each holds a server thread."""

    def __init__(self, settings: Settings, *, gap_wait: float = GAP_WAIT) -> None:
        self.settings = settings
        self.gap_wait = gap_wait
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self._tracker: GapTracker | None = None
        self._thread: threading.Thread | None = None

    @property
    def streams(self) -> int:
        with self._lock:
            return len(self._subs)

    def positions(self) -> tuple[int, int] | None:
        """(highest id read, watermark) of the running poller; None while idle."""
        with self._lock:
            tracker = self._tracker
            return (tracker.position, tracker.watermark()) if tracker is not None else None

    def subscribe(self, where: EventFilter) -> Subscription | None:
        """A new stream from now on; None when this process has as many as it may."""
        with self._lock:
            if len(self._subs) >= self.settings.events_max_streams:
                return None
            if self._tracker is None:
                self._tracker = self._start_tracker()
            tracker = self._tracker
            sub = Subscription(where, tracker.position, tracker.watermark(), frozenset(tracker.gaps))
            self._subs.add(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events-poller", daemon=True)
                self._thread.start()
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _start_tracker(self) -> GapTracker:
        # The ids missing just below the newest may belong to transactions still open. Only
        # those above the lowest id there: below it they were pruned (retention deletes the
        # oldest first), not skipped.
        with session_scope(self.settings) as session:
            newest = job_events.latest_id(session)
            present = set(job_events.present_ids(session, max(0, newest - START_WINDOW), newest))
        now = time.monotonic()
        tracker = GapTracker(position=newest, wait=self.gap_wait)
        if present:
            tracker.gaps = {i: now for i in range(min(present) + 1, newest) if i not in present}
        return tracker

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._subs:
                    # Idle: the next stream starts a poller (and a tracker) afresh.
                    self._thread = None
                    self._tracker = None
                    return
            try:
                full = self.poll()
            except DatabaseUnavailable as exc:
                log.warning("reading job events failed (streams keep waiting): %s", exc)
                full = False
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
                log.exception("reading job events failed")
                full = False
            if not full:
                time.sleep(self.settings.events_poll_seconds)

    def poll(self) -> bool:
        """Read what is new and hand it to the streams; whether a whole batch came (more may wait)."""
        tracker = self._tracker
        if tracker is None:
            return False
        with session_scope(self.settings) as session:
            rows = job_events.read_new(session, tracker.position, tracker.missing(), limit=BATCH)
        now = time.monotonic()
        with self._lock:
            fresh = set(tracker.observe((e.id for e in rows), now))
            tracker.expire(now)
            mark = tracker.watermark()
            subs = list(self._subs)
        new = [e for e in rows if e.id in fresh]
        for sub in subs:
            sub.offer([e for e in new if sub.where.matches(e)], mark)
        return len(rows) >= BATCH


_HUB_LOCK = threading.Lock()


def hub() -> Hub:
    """This process's hub (made on first use, and again after a fork)."""
    app = current_app
    with _HUB_LOCK:
        found = app.extensions.get(EXTENSION)
        if found is None or found.pid != os.getpid():
            found = app.extensions[EXTENSION] = Hub(runtime().settings)
        return found


def _stream(hub: Hub, sub: Subscription, after: int | None, settings: Settings) -> Iterator[str]:
    """The stream's text: the retry hint, the backlog after ``after`` (when resuming), then live
    events and keep-alives until the stream's time is up. ``id:`` is the resume point: every id
    up to it was sent or is not this stream's — the event's id, lower while an earlier id may
    still appear (docs/events.md)."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        # Spread the reconnects of streams opened together.
        deadline = time.monotonic() + settings.events_stream_seconds * random.uniform(0.9, 1.0)
        resume = after if after is not None else sub.mark
        from_backlog: set[int] = set()
        if after is not None and after < sub.start:
            cursor = after
            while time.monotonic() < deadline and not STOPPING.is_set():
                with session_scope(settings) as session:
                    page = job_events.read_range(session, cursor, sub.start, sub.where, limit=PAGE)
                for event in page:
                    if event.id in sub.pending:
                        from_backlog.add(event.id)  # it may come live as well
                    resume = max(resume, min(event.id, sub.mark))
                    yield job_events.sse(event, resume)
                if len(page) < PAGE:
                    break
                cursor = page[-1].id
        keepalive = settings.events_keepalive_seconds
        quiet_since = time.monotonic()
        while not sub.overflowed and not STOPPING.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            taken, mark = sub.take(min(deadline - now, keepalive - (now - quiet_since), _STOP_CHECK))
            batch = sorted((e for e in taken if e.id not in from_backlog and (after is None or e.id > after)),
                           key=lambda e: e.id)
            for event in batch:
                # Up to the watermark every id was read and handed over (in this batch or before),
                # so resuming at min(event, watermark) loses nothing once this event is out.
                resume = max(resume, min(event.id, mark))
                yield job_events.sse(event, resume)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
    finally:
        hub.unsubscribe(sub)


def _unknown(field: str, what: str, value: uuid.UUID) -> Any:
    return http_error(422, "The request is invalid; see errors.",
                      errors={"query": {field: [f"no {what} {value} (of this tenant)"]}})


def _check_ids(settings: Settings, where: EventFilter) -> None:
    """422 for a job or schedule id that names nothing the caller may see."""
    if where.job_id is None and where.schedule_id is None:
        return
    with session_scope(settings) as session:
        for field, model, value, what in (("job_id", Job, where.job_id, "job"),
                                          ("schedule_id", Schedule, where.schedule_id, "schedule")):
            if value is None:
                continue
            query = select(model.id).where(model.id == value)
            if where.tenant is not None:
                query = query.where(model.tenant == where.tenant)
            if session.scalar(query) is None:
                raise _unknown(field, what, value)


@blp.route("")
class EventsView(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(EventHeadersSchema(), location="headers", as_kwargs=True)
    @blp.arguments(EventQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, SSE_EVENT, content_type="text/event-stream", description=(
        "`retry: 2000`, then per change `id: <resume id>`, `event: job`, `data: {id, job_id, status, "
        "previous_status, at, attempt, schedule_id, name, type, tenant}`; `: keep-alive` after "
        "CHRONOQ_EVENTS_KEEPALIVE_SECONDS of silence; ends after CHRONOQ_EVENTS_STREAM_SECONDS."))
    @blp.alt_response(503, description="This API process has CHRONOQ_EVENTS_MAX_STREAMS streams open "
                                       "(or the database is unavailable); see Retry-After.", success=False)
    def get(self, resume_after: int | None = None, last_event_id: int | None = None, job_id: uuid.UUID | None = None,
            schedule_id: uuid.UUID | None = None, status: list[str] | None = None,
            tenant: str | None = None) -> Response:
        """Stream the caller's job state changes as server-sent events.

        Every change of a job's status (created, QUEUED, RUNNING, RETRYING, SUCCESS, FAILED,
        CANCELLED, SKIPPED, …) of the caller's tenant (admins: every tenant, or ``tenant``),
        narrowed by ``job_id``, ``schedule_id`` and ``status``. Without ``Last-Event-ID`` (or
        ``last_event_id``) the stream starts with the changes after the request; with it, it
        resumes after that id while the events are retained (CHRONOQ_EVENTS_RETENTION_HOURS).
        Delivery is at least once and may be out of order: deduplicate by ``data.id``.
        """
        settings = runtime().settings
        scope = principal().tenant_scope
        where = EventFilter(tenant=scope if scope is not None else tenant, job_id=job_id, schedule_id=schedule_id,
                            statuses=frozenset(status or ()))
        _check_ids(settings, where)
        after = resume_after if resume_after is not None else last_event_id
        events_hub = hub()
        sub = events_hub.subscribe(where)
        if sub is None:
            raise http_error(503, f"This API process already serves {settings.events_max_streams} event streams "
                                  "(CHRONOQ_EVENTS_MAX_STREAMS); try again shortly.",
                             headers={"Retry-After": str(RETRY_AFTER)})
        if after is not None and after > sub.start:
            try:
                with session_scope(settings) as session:
                    if after > job_events.latest_id(session):
                        after = None  # names no event there is (a database made anew): start from now
            except BaseException:
                events_hub.unsubscribe(sub)
                raise
        response = Response(_stream(events_hub, sub, after, settings), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # Also when the body is never read (HEAD, a client gone at once): closing an unstarted
        # generator does not run its ``finally``.
        response.call_on_close(lambda: events_hub.unsubscribe(sub))
        return response
