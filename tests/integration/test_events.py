"""GET /api/events over real HTTP against the real databases (docs/events.md): the triggers record
each transition every code path makes (PostgreSQL and SQLite), a stream on one API instance sees
what was written through another, filters, resumption with Last-Event-ID, tenant isolation, 422s,
the bound on concurrent streams, ids committed out of order, and retention."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import BaseWSGIServer, make_server

from api import create_app
from api.events import EXTENSION as HUB
from common.core import apikeys, control, store
from common.core.events import EventFilter, read_range
from common.core.messages import UpdateMessage
from common.core.models import Job, JobEvent, Schedule
from common.core.roles import Role
from common.infra.clock import utcnow
from common.infra.config import Settings, load_settings
from common.infra.db import get_engine, session_scope
from scheduler_service.maintenance import Maintenance
from tests.conftest import TEST_SETTINGS
from tests.helpers import add_job, wait_for

NO_BROKER = "127.0.0.1:1"
WAIT = 15.0  # generous: the machine is shared; every wait ends as soon as its condition holds


# --- servers and clients ----------------------------------------------------------------------


@dataclass
class Server:
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def request(self, method: str, path: str, key: str | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
            data = None
            if body is not None:
                data, sent["Content-Type"] = json.dumps(body), "application/json"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            text = raw.decode()
            parsed = json.loads(text) if response.getheader("Content-Type", "").startswith("application/json") else text
            return response.status, dict(response.getheaders()), parsed
        finally:
            conn.close()

    def hub_positions(self) -> tuple[int, int] | None:
        found = self.app.extensions.get(HUB)
        return found.positions() if found is not None else None


def settled(server: Server) -> None:
    """Wait until the server's poller awaits no id (one rolled back by an earlier test is
    awaited a few seconds): from then on, id: lines equal the events' ids."""
    wait_for(lambda: (p := server.hub_positions()) is not None and p[0] == p[1], timeout=WAIT,
             what="no id pending")


def _serve(settings: Settings) -> Server:
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="events-test-server",
                              daemon=True)
    thread.start()
    return Server(app, server, thread)


@dataclass
class Stream:
    """A server-sent event stream read on a thread of its own."""

    status: int
    headers: dict[str, str]
    body: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the id: lines, in order
    comments: list[str] = field(default_factory=list)
    first_line: str | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    sock: socket.socket | None = None

    def data_ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    def of_job(self, job_id: uuid.UUID) -> list[tuple[str | None, str]]:
        return [(e["previous_status"], e["status"]) for e in self.events if e["job_id"] == str(job_id)]

    def wait(self, condition: Any, what: str) -> None:
        wait_for(condition, timeout=WAIT, what=what)

    def close(self) -> None:
        """Hang up (as a browser tab that closes) and wait for the reader to stop."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        assert self.ended.wait(WAIT)


def open_stream(server: Server, key: str | None, query: str = "", headers: dict[str, str] | None = None) -> Stream:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    conn.request("GET", "/api/events" + (f"?{query}" if query else ""), headers=sent)
    sock = conn.sock  # getresponse() lets go of it (the server closes the connection at the end)
    response = conn.getresponse()
    if response.status != 200:
        body = json.loads(response.read())
        conn.close()
        stream = Stream(response.status, dict(response.getheaders()), body)
        stream.ended.set()
        return stream
    stream = Stream(200, dict(response.getheaders()), None, sock=sock)
    threading.Thread(target=_read, args=(stream, response), daemon=True).start()
    return stream


def _read(stream: Stream, response: http.client.HTTPResponse) -> None:
    block: dict[str, str] = {}
    try:
        while True:
            line = response.readline()
            if not line:
                return
            text = line.decode().rstrip("\r\n")
            if stream.first_line is None:
                stream.first_line = text
            if text.startswith(":"):
                stream.comments.append(text[1:].strip())
            elif text:
                name, _, value = text.partition(":")
                block[name] = value.removeprefix(" ")
            elif "data" in block:
                assert block.get("event") == "job", block
                stream.ids.append(int(block["id"]))
                stream.events.append(json.loads(block["data"]))
                block = {}
            else:
                block = {}
    except (OSError, ValueError, http.client.HTTPException):  # hung up (by the test or the server)
        return
    finally:
        stream.ended.set()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(pg_url: str) -> Settings:
    return replace(
        load_settings({}, database_url=pg_url, **TEST_SETTINGS),
        auth_enabled=True, kafka_bootstrap=NO_BROKER, scan_interval_seconds=60, auth_failures_per_minute=100_000,
        events_poll_seconds=0.05, events_keepalive_seconds=0.3, events_stream_seconds=30, events_max_streams=6,
    )


@pytest.fixture(scope="module")
def servers(base: Settings) -> Iterator[dict[str, Server]]:
    """Two API instances on the same database (as two gunicorn workers or hosts: each has its
    own poller), one whose streams end fast, one that allows two streams."""
    made = {
        "a": _serve(base),
        "b": _serve(base),
        "short": _serve(replace(base, events_stream_seconds=0.6, events_keepalive_seconds=0.15)),
        "two": _serve(replace(base, events_max_streams=2)),
    }
    yield made
    for server in made.values():
        server.server.shutdown()
        server.app.extensions["chronoq"].close()


@dataclass
class Tenant:
    name: str
    viewer: str
    writer: str


def make_key(settings: Settings, tenant: str, role: Role) -> str:
    with session_scope(settings) as session:
        return apikeys.create_key(session, tenant=tenant, role=role, name=f"events-{role.label}", created_by="test",
                                  keyring=None, now=utcnow()).key


def new_tenant(settings: Settings) -> Tenant:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    return Tenant(name, make_key(settings, name, Role.VIEWER), make_key(settings, name, Role.WRITER))


@pytest.fixture
def tenant(base: Settings) -> Tenant:
    return new_tenant(base)


def create(server: Server, tenant: Tenant, name: str = "ev") -> uuid.UUID:
    status, _, body = server.request("POST", "/api/jobs", tenant.writer,
                                     {"name": name, "type": "noop", "delay_seconds": 3600})
    assert status == 201, body
    return uuid.UUID(body["id"])


def events_of(settings: Settings, tenant: str) -> list[int]:
    with session_scope(settings) as session:
        return [e.id for e in read_range(session, 0, 2**62, EventFilter(tenant=tenant), limit=10_000)]


def transitions(settings: Settings, job_id: uuid.UUID) -> list[tuple[str | None, str, int]]:
    with session_scope(settings) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(r.previous_status, r.status, r.attempt) for r in rows]


def queue_and_start(settings: Settings, job_id: uuid.UUID) -> Any:
    """The scanner's claim (SCHEDULED → QUEUED) and an executor's start claim (→ RUNNING)."""
    now = utcnow()
    with session_scope(settings) as session:
        control.trigger(session, job_id, now=now)
        message = store.claim_ids(session, [job_id], now=now, lease=10).messages[0]
    with session_scope(settings) as session:
        assert store.claim_starts(session, [message], executor="e", now=utcnow(), lease=10)
    return message


def finish(settings: Settings, message: Any, status: str = "SUCCESS") -> None:
    """The result writer's write of an attempt's end."""
    now = utcnow()
    with session_scope(settings) as session:
        assert store.apply_updates(session, [UpdateMessage(
            job_id=message.job_id, token=message.token, status=status, attempt=message.attempt, at=now,
            executor="e", started_at=now, finished_at=now)], lease=10) == 1


# --- the triggers -----------------------------------------------------------------------------


def test_the_triggers_record_each_transition_of_every_code_path(database: Settings) -> None:
    settings, now = database, utcnow()
    # Create (the API's set-based insert), the scanner's claim, an executor's start claim, the
    # result writer's end.
    first = {"id": uuid.uuid4(), "name": "a", "type": "noop", "payload": {}, "meta": {},
             "execute_at": now + timedelta(seconds=1), "priority": 0, "max_retries": 0, "timeout_seconds": 5.0,
             "misfire_grace_seconds": None, "idempotency_key": None, "request_hash": None}
    with session_scope(settings) as session:
        store.add_jobs(session, [first], claim=[False], now=now, lease=10)
    with session_scope(settings) as session:
        claimed = store.claim_due(session, now=now, horizon=now + timedelta(seconds=5), lease=10, limit=10)
    message = claimed.messages[0]
    with session_scope(settings) as session:
        assert store.claim_starts(session, [message], executor="e", now=utcnow(), lease=10)
    finish(settings, message, "FAILED")
    assert transitions(settings, first["id"]) == [
        (None, "SCHEDULED", 0), ("SCHEDULED", "QUEUED", 0), ("QUEUED", "RUNNING", 1), ("RUNNING", "FAILED", 1)]
    # Cancel; trigger (job control) and its dispatch; rerun.
    cancelled, triggered = add_job(settings, due_in=3600), add_job(settings, due_in=3600, tenant="acme")
    with session_scope(settings) as session:
        assert store.cancel(session, cancelled, now=utcnow()).cancelled
        assert control.trigger(session, triggered, now=utcnow(), tenant="acme").done
        store.claim_ids(session, [triggered], now=utcnow(), lease=10)
        assert control.rerun(session, first["id"], now=utcnow()).done
    assert transitions(settings, cancelled) == [(None, "SCHEDULED", 0), ("SCHEDULED", "CANCELLED", 0)]
    # The trigger moved the job to SCHEDULED (as it was) and the claim to QUEUED: one change.
    assert transitions(settings, triggered) == [(None, "SCHEDULED", 0), ("SCHEDULED", "QUEUED", 0)]
    assert transitions(settings, first["id"])[-1] == ("FAILED", "SCHEDULED", 1)
    with session_scope(settings) as session:
        row = session.scalars(select(JobEvent).where(JobEvent.job_id == triggered)).first()
        assert row.tenant == "acme" and row.name == "test" and row.type == "noop"
        assert abs((row.at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)).total_seconds()) < 60
    # A statement that does not change the status writes nothing; a rolled-back change leaves none.
    with session_scope(settings) as session:
        session.execute(sa.update(Job).where(Job.id == cancelled).values(status="CANCELLED", error="again"))
    with pytest.raises(RuntimeError), session_scope(settings) as session:
        session.execute(sa.update(Job).where(Job.id == triggered).values(status="RUNNING"))
        raise RuntimeError("roll back")
    assert len(transitions(settings, cancelled)) == 2 and len(transitions(settings, triggered)) == 2


def test_occurrences_of_a_schedule_carry_its_id(database: Settings) -> None:
    schedule_id, now = uuid.uuid4(), utcnow()
    with session_scope(database) as session:
        session.add(Schedule(id=schedule_id, tenant="acme", interval_seconds=60.0, job={"name": "o", "type": "noop"}))
        session.flush()
        [job_id] = store.add_occurrences(session, [{
            "id": uuid.uuid4(), "idempotency_key": None, "request_hash": None, "name": "o", "type": "noop", "payload": {}, "meta": {}, "tenant": "acme", "execute_at": now,
            "priority": 0, "max_retries": 0, "timeout_seconds": 5.0, "misfire_grace_seconds": None,
            "schedule_id": schedule_id, "scheduled_for": now}], now=now)
    with session_scope(database) as session:
        assert [(e.schedule_id, e.job_id) for e in session.scalars(select(JobEvent))] == [(schedule_id, job_id)]


# --- streams over HTTP ------------------------------------------------------------------------


def test_a_stream_sees_changes_written_through_another_instance_with_its_filters(
    base: Settings, servers: dict[str, Server], tenant: Tenant
) -> None:
    a, b = servers["a"], servers["b"]
    one = create(b, tenant, "one")
    schedule_id = uuid.uuid4()
    with session_scope(base) as session:
        session.add(Schedule(id=schedule_id, tenant=tenant.name, interval_seconds=60.0,
                             job={"name": "o", "type": "noop"}))
    everything = open_stream(a, tenant.viewer)
    of_one = open_stream(a, tenant.viewer, f"job_id={one}")
    by_status = open_stream(a, tenant.viewer, "status=RUNNING&status=CANCELLED")
    of_schedule = open_stream(a, tenant.viewer, f"schedule_id={schedule_id}")
    streams = (everything, of_one, by_status, of_schedule)
    assert [s.status for s in streams] == [200] * 4
    settled(a)
    assert everything.headers["Content-Type"].startswith("text/event-stream")
    two = create(b, tenant, "two")
    status, _, _ = b.request("DELETE", f"/api/jobs/{two}", tenant.writer)
    assert status == 200
    message = queue_and_start(base, one)
    occurrence = add_job(base, due_in=3600, tenant=tenant.name, schedule_id=schedule_id, scheduled_for=utcnow())
    finish(base, message)  # the last change: every stream has had its events once this one arrived
    everything.wait(lambda: len(everything.events) == 6, "all six changes")
    assert everything.of_job(two) == [(None, "SCHEDULED"), ("SCHEDULED", "CANCELLED")]
    assert everything.of_job(one) == [("SCHEDULED", "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "SUCCESS")]
    assert everything.of_job(occurrence) == [(None, "SCHEDULED")]
    assert everything.data_ids() == sorted(everything.data_ids()) and everything.ids == everything.data_ids()
    done = everything.events[-1]
    assert done["attempt"] == 1 and done["name"] == "one" and done["type"] == "noop" and done["tenant"] == tenant.name
    assert done["at"].endswith("+00:00") and done["schedule_id"] is None
    of_one.wait(lambda: len(of_one.events) == 3, "job one's changes")
    by_status.wait(lambda: len(by_status.events) == 2, "RUNNING and CANCELLED")
    of_schedule.wait(lambda: len(of_schedule.events) == 1, "the occurrence")
    assert [e["status"] for e in of_one.events] == ["QUEUED", "RUNNING", "SUCCESS"]
    assert {(e["job_id"], e["status"]) for e in by_status.events} == {(str(one), "RUNNING"), (str(two), "CANCELLED")}
    assert of_schedule.events[0]["schedule_id"] == str(schedule_id)
    for stream in streams:
        stream.close()
    assert stream.first_line == "retry: 2000"
    wait_for(lambda: a.app.extensions[HUB].streams == 0, timeout=WAIT, what="closed streams to be let go")


def test_resuming_with_last_event_id_loses_and_repeats_nothing(
    base: Settings, servers: dict[str, Server], tenant: Tenant
) -> None:
    a, b = servers["a"], servers["b"]
    first = open_stream(a, tenant.viewer)
    settled(a)
    one = create(b, tenant)
    queue_and_start(base, one)
    first.wait(lambda: len(first.events) == 3, "the first three changes")
    first.close()
    # While nobody listens: more changes, on the other instance.
    two = create(b, tenant)
    assert b.request("DELETE", f"/api/jobs/{two}", tenant.writer)[0] == 200
    # EventSource reconnects to the URL it first used, sending the last id it got in the header:
    # the header wins over ?last_event_id=.
    second = open_stream(b, tenant.viewer, "last_event_id=0", {"Last-Event-ID": str(first.ids[-1])})
    second.wait(lambda: len(second.events) == 2, "the two missed changes")
    three = create(a, tenant)
    second.wait(lambda: len(second.events) == 3, "a live change after the backlog")
    second.close()
    received = first.data_ids() + second.data_ids()
    assert received == events_of(base, tenant.name)  # each once, in order
    assert second.events[-1]["job_id"] == str(three)
    # ?last_event_id= alone resumes too (a client without the header).
    third = open_stream(a, tenant.viewer, f"last_event_id={received[2]}")
    third.wait(lambda: len(third.events) == 3, "the changes after the third")
    third.close()
    assert third.data_ids() == received[3:]


def test_another_tenants_changes_never_appear(base: Settings, servers: dict[str, Server], tenant: Tenant) -> None:
    a, b = servers["a"], servers["b"]
    other = new_tenant(base)
    admin = make_key(base, "ops", Role.ADMIN)
    mine = open_stream(a, tenant.viewer)
    # A viewer naming another tenant still gets only its own (as GET /api/jobs).
    sneaky = open_stream(a, tenant.viewer, f"tenant={other.name}")
    theirs = open_stream(b, other.viewer)
    as_admin = open_stream(b, admin, f"tenant={other.name}")
    for _ in range(2):
        create(b, other)
        create(a, tenant)
    last_mine, last_theirs = create(a, tenant), create(b, other)
    for stream, last in ((mine, last_mine), (sneaky, last_mine), (theirs, last_theirs), (as_admin, last_theirs)):
        stream.wait(lambda s=stream, j=last: any(e["job_id"] == str(j) for e in s.events), "the last create")
        stream.close()
    assert {e["tenant"] for e in mine.events + sneaky.events} == {tenant.name}
    assert {e["tenant"] for e in theirs.events + as_admin.events} == {other.name}
    assert len(mine.events) == len(sneaky.events) == 3 and len(theirs.events) == len(as_admin.events) == 3
    # A job of another tenant is unknown to this one: 422, as an id that names nothing.
    status, _, body = a.request("GET", f"/api/events?job_id={last_theirs}", tenant.viewer)
    assert status == 422 and "job_id" in body["errors"]["query"]


@pytest.mark.parametrize("query, headers, location, name", [
    ("job_id=42", {}, "query", "job_id"),
    (f"job_id={uuid.UUID(int=7)}", {}, "query", "job_id"),  # names no job
    (f"schedule_id={uuid.UUID(int=7)}", {}, "query", "schedule_id"),
    ("status=RUNNING&status=DONE", {}, "query", "status"),
    ("last_event_id=-1", {}, "query", "last_event_id"),
    ("", {"Last-Event-ID": "abc"}, "headers", "Last-Event-ID"),
])
def test_invalid_filters_are_422s_naming_the_field(
    servers: dict[str, Server], tenant: Tenant, query: str, headers: dict[str, str], location: str, name: str
) -> None:
    stream = open_stream(servers["a"], tenant.viewer, query, headers)
    assert stream.status == 422 and name in stream.body["errors"][location], stream.body
    assert set(stream.body) <= {"code", "status", "message", "errors"}


def test_a_stream_needs_a_credential(servers: dict[str, Server]) -> None:
    assert open_stream(servers["a"], None).status == 401


def test_streams_beyond_the_bound_get_503_and_ordinary_requests_go_on(
    servers: dict[str, Server], tenant: Tenant
) -> None:
    two = servers["two"]
    held = [open_stream(two, tenant.viewer), open_stream(two, tenant.viewer)]
    assert [s.status for s in held] == [200, 200]
    refused = open_stream(two, tenant.viewer)
    assert refused.status == 503 and refused.headers["Retry-After"] == "5"
    assert "CHRONOQ_EVENTS_MAX_STREAMS" in refused.body["message"] and refused.body["code"] == 503
    assert two.request("GET", "/api/jobs", tenant.viewer)[0] == 200
    held[0].close()

    def reopened() -> Stream | None:
        stream = open_stream(two, tenant.viewer)
        return stream if stream.status == 200 else None

    held.append(wait_for(reopened, timeout=WAIT, what="a freed slot"))
    for stream in held:
        stream.close()


def test_a_stream_ends_by_itself_with_keep_alives_on_the_way(servers: dict[str, Server], tenant: Tenant) -> None:
    started = time.monotonic()
    stream = open_stream(servers["short"], tenant.viewer)
    assert stream.ended.wait(WAIT), "the stream did not end"
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < WAIT
    assert stream.first_line == "retry: 2000" and "keep-alive" in stream.comments and stream.events == []
    wait_for(lambda: servers["short"].app.extensions[HUB].streams == 0, timeout=WAIT, what="the slot to be freed")


def test_an_id_committed_after_a_higher_one_is_delivered_and_resumable(
    base: Settings, servers: dict[str, Server], tenant: Tenant
) -> None:
    """PostgreSQL hands out ids at insert and commits in any order: the stream delivers the late
    one when it appears, and its id: line never lets a reconnect skip it."""
    a = servers["a"]
    stream = open_stream(a, tenant.viewer)
    settled(a)
    slow = Session(get_engine(base))
    try:
        late = Job(tenant=tenant.name, name="late", type="noop", execute_at=utcnow(), timeout_seconds=5.0)
        slow.add(late)
        slow.flush()  # its event has an id now; uncommitted
        late_id = late.id
        early = add_job(base, due_in=3600, tenant=tenant.name, name="early")
        stream.wait(lambda: len(stream.events) == 1, "the committed change")
        assert stream.events[0]["job_id"] == str(early)
        assert stream.ids[0] < stream.events[0]["id"]  # a reconnect resumes below the pending id
        slow.commit()
    finally:
        slow.close()
    stream.wait(lambda: len(stream.events) == 2, "the late change")
    stream.close()
    assert stream.events[1]["job_id"] == str(late_id) and stream.events[1]["id"] < stream.events[0]["id"]
    assert stream.ids[1] == stream.events[1]["id"]  # nothing awaited below it any more
    resumed = open_stream(a, tenant.viewer, f"last_event_id={stream.ids[0]}")
    resumed.wait(lambda: len(resumed.events) >= 1, "the resumed backlog")
    resumed.close()
    assert str(late_id) in {e["job_id"] for e in resumed.events}  # at least once: may repeat, never lose


def test_retention_deletes_old_events_only(database: Settings) -> None:
    old, recent = add_job(database, due_in=3600), add_job(database, due_in=3600)
    with session_scope(database) as session:
        session.execute(sa.update(JobEvent).where(JobEvent.job_id == old).values(at=utcnow() - timedelta(hours=25)))
    maintenance = Maintenance(database, threading.Event(), utcnow, batch=1)
    pruned = maintenance.run_once(utcnow())
    assert pruned.events == 1
    assert transitions(database, old) == [] and len(transitions(database, recent)) == 1
