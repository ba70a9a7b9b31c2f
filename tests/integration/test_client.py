"""The Python client (chronoq/client.py) against the real API: the app served over HTTP by
werkzeug in a thread, on the test PostgreSQL database and the tansu broker, with
authentication on. Also the client's retry after a connection dropped once the API had stored
the job (through a TCP proxy that drops it), and its event-stream reader against a stream
served over HTTP."""

from __future__ import annotations

import itertools
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, make_server

from api import create_app
from chronoq import errors
from chronoq.client import Client
from common.core import apikeys
from common.core.models import Job
from common.core.roles import Role
from common.core.secrets import Keyring
from common.infra.clock import utcnow
from common.infra.config import Settings, load_settings
from common.infra.db import get_engine, session_scope
from common.infra.kafka import ensure_topics
from common.launch.broker import LocalBroker
from tests.conftest import TEST_SETTINGS
from tests.helpers import wait_for

TEST_FERNET_KEY = "u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo="


@dataclass
class System:
    """The API served over HTTP, and what a test needs to reach it."""

    settings: Settings
    url: str
    admin: str   # an admin key of tenant "default"
    viewer: str  # a viewer key of tenant "default"
    app: Flask

    def open_streams(self) -> int:
        """Event streams the API serves now."""
        hub = self.app.extensions.get("chronoq-events")
        return hub.streams if hub is not None else 0

    def client(self, **kw: Any) -> Client:
        return Client(kw.pop("url", self.url), kw.pop("token", self.admin), **{"timeout": 10.0, **kw})


def serve(app: Flask) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    return server, thread


def make_key(settings: Settings, role: str, tenant: str = "default") -> str:
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant=tenant, role=Role.parse(role), name=f"client-test-{role}",
                                  created_by="test", keyring=Keyring.from_settings(settings), now=utcnow())
    return made.key


@pytest.fixture(scope="module")
def system(pg_url: str, broker: LocalBroker) -> Iterator[System]:
    """One API for the module (tests make their own jobs and look only at those)."""
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings({}, database_url=pg_url, **{
        **TEST_SETTINGS, "auth_enabled": True, "secret_key": TEST_FERNET_KEY, "kafka_bootstrap": broker.bootstrap,
        "topic_jobs": f"jobs-{suffix}", "topic_updates": f"updates-{suffix}", "topic_dlq": f"dlq-{suffix}",
        "group_prefix": f"test-{suffix}",
        # A stream notices a client that left at its next write: keep-alives soon, so that
        # none outlives the module.
        "events_keepalive_seconds": 0.5})
    with get_engine(settings).begin() as conn:
        conn.execute(sa.text("TRUNCATE job_attempts, jobs, workflows, schedules, api_keys, tenants, audit_log"))
    ensure_topics(settings)
    app = create_app(settings)
    server, thread = serve(app)
    try:
        yield System(settings, f"http://127.0.0.1:{server.server_port}", make_key(settings, "admin"),
                     make_key(settings, "viewer"), app)
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["chronoq"].close()


def set_status(settings: Settings, job_id: str, status: str) -> None:
    """What an executor and the result writer would do: move the job on, in the database."""
    with session_scope(settings) as session:
        job = session.get(Job, uuid.UUID(job_id))
        job.status = status
        if status in ("SUCCESS", "FAILED"):
            job.finished_at = utcnow()


def names(settings: Settings, name: str) -> int:
    with session_scope(settings) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.name == name))


# --- jobs -----------------------------------------------------------------------------------


def test_every_job_call_against_the_api(system: System) -> None:
    client = system.client()
    at = (utcnow() + timedelta(hours=1)).replace(microsecond=250_000)
    name = f"calls-{uuid.uuid4().hex[:6]}"
    job = client.jobs.create(name, "noop", execute_at=at, payload={"n": 1}, metadata={"team": "ops"}, max_retries=2,
                             timeout_seconds=30, priority=3, misfire_grace_seconds=60)
    assert job.status == "SCHEDULED" and job.execute_at == at and job.metadata == {"team": "ops"}
    assert (job.max_retries, job.priority, job.misfire_grace_seconds) == (2, 3, 60.0)
    assert client.jobs.get(job.id) == job.__class__.from_json(client.jobs.get(job.id).raw)
    assert client.jobs.get(job.id).id == job.id and not job.finished

    page = client.jobs.list(name=name, metadata={"team": "ops"}, status=["SCHEDULED"])
    assert [j.id for j in page.items] == [job.id] and page.next_cursor is None
    assert client.jobs.list(name=name, status="SUCCESS").items == []
    assert client.jobs.attempts(job.id) == []

    changed = client.jobs.update(job.id, priority=9, payload={"n": 2})
    assert (changed.priority, changed.payload) == (9, {"n": 2})
    triggered = client.jobs.trigger(job.id)
    assert triggered.status in ("QUEUED", "SCHEDULED") and triggered.original_execute_at == at
    cancelled = client.jobs.cancel(job.id)
    assert cancelled.status == "CANCELLED" and cancelled.finished
    rerun = client.jobs.rerun(job.id)
    assert rerun.runs == 2 and rerun.status in ("QUEUED", "SCHEDULED")
    client.jobs.cancel(job.id)

    redrive = client.jobs.redrive(status="CANCELLED", name=name, dry_run=True)
    assert (redrive.matched, redrive.rerun, redrive.dry_run) == (1, 0, True)
    stats = client.jobs.stats()
    assert stats.by_status["CANCELLED"] >= 1 and stats.total >= 1

    batch = client.jobs.create_batch([
        {"name": name, "type": "noop", "delay_seconds": 3600},
        {"name": name, "type": "noop", "execute_at": "tomorrow"},
    ])
    assert (batch.created, batch.failed) == (1, 1)
    assert batch.items[0].ok and batch.items[0].job.status == "SCHEDULED"
    assert batch.items[1].code == 422 and "execute_at" in batch.items[1].errors
    assert client.health() == {"status": "ok"} and client.ready() == {"status": "ok"}


def test_errors_carry_status_code_and_field_errors(system: System) -> None:
    client = system.client()
    with pytest.raises(errors.NotFound) as missing:
        client.jobs.get(str(uuid.uuid4()))
    assert missing.value.status == 404 and "No job" in missing.value.message

    job = client.jobs.create("conflict", "noop", delay_seconds=3600)
    client.jobs.cancel(job.id)
    with pytest.raises(errors.Conflict) as conflict:
        client.jobs.cancel(job.id)
    assert conflict.value.status == 409 and "CANCELLED" in conflict.value.message

    with pytest.raises(errors.Unprocessable) as invalid:
        client.jobs.create("bad", "noop", execute_at="2020-01-01T00:00:00", payload={"n": 1})
    fields = dict(invalid.value.field_errors())
    assert invalid.value.code == 422 and "execute_at" in fields, fields
    assert "execute_at" in str(invalid.value)

    with pytest.raises(errors.Unauthorized) as unauthorized:
        system.client(token="cq_not_a_key").jobs.list()
    assert unauthorized.value.status == 401
    with pytest.raises(errors.Forbidden):
        system.client(token=system.viewer).jobs.create("viewer", "noop", delay_seconds=60)
    with pytest.raises(errors.Unavailable):
        Client("http://127.0.0.1:1", retries=1).jobs.list()


def test_pages_follow_the_keyset_cursor(system: System) -> None:
    client = system.client()
    name = f"page-{uuid.uuid4().hex[:6]}"
    base = utcnow() + timedelta(hours=2)
    made = client.jobs.create_batch([{"name": name, "type": "noop", "execute_at": base + timedelta(seconds=i)}
                                     for i in range(7)])
    assert made.created == 7
    first = client.jobs.list(name=name, limit=3)
    second = client.jobs.list(name=name, limit=3, cursor=first.next_cursor)
    assert len(first.items) == len(second.items) == 3 and first.next_cursor and second.next_cursor
    every = list(client.jobs.iter_all(name=name, page_size=3))
    assert [job.id for job in every] == [item.job.id for item in made.items]
    assert [job.execute_at for job in every] == sorted(job.execute_at for job in every)


def test_wait_returns_the_finished_job(system: System) -> None:
    client = system.client()
    job = client.jobs.create("waited", "noop", delay_seconds=3600)
    timer = threading.Timer(0.3, set_status, (system.settings, job.id, "SUCCESS"))
    timer.start()
    try:
        finished = client.wait(job.id, timeout=20)
    finally:
        timer.join()
    assert finished.status == "SUCCESS" and finished.finished_at is not None
    other = client.jobs.create("never", "noop", delay_seconds=3600)
    with pytest.raises(errors.WaitTimeout) as timeout:
        client.wait(other.id, timeout=0.3)
    assert timeout.value.job.status == "SCHEDULED"


# --- retries ---------------------------------------------------------------------------------


class DroppingProxy:
    """A TCP proxy in front of the API. While ``drops`` is above 0, a connection's request is
    passed on, the API's answer is awaited (so whatever the request does is done and committed)
    and then the client's connection is closed without that answer: a network failure after
    the fact. Other connections pass through."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drops = 0
        self.connections = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            drop = self.drops > 0
            self.drops -= drop
            threading.Thread(target=self._serve, args=(conn, drop), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, conn: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()
        if not drop:
            self._pipe(upstream, conn)
        else:
            upstream.recv(65536)  # the API answers only after its transaction committed
            self.dropped += 1
            for s in (conn, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:  # the pipe's end already shut it
                    pass
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(system: System) -> Iterator[DroppingProxy]:
    made = DroppingProxy(int(system.url.rsplit(":", 1)[1]))
    yield made
    made.close()


def test_a_create_whose_answer_was_lost_is_retried_and_makes_one_job(system: System, proxy: DroppingProxy) -> None:
    name = f"retried-{uuid.uuid4().hex[:6]}"
    client = system.client(url=proxy.url, retries=2)
    client._sleep = lambda _seconds: None  # the pauses are not what this test is about
    proxy.drops = 1
    job = client.jobs.create(name, "noop", delay_seconds=3600)
    assert proxy.dropped == 1 and proxy.connections == 2  # the first answer was lost; sent again
    assert names(system.settings, name) == 1
    assert client.jobs.get(job.id).name == name

    batch_name = f"{name}-batch"
    proxy.drops = 1  # the next connection: a new client opens one (an open keep-alive one would pass)
    client = system.client(url=proxy.url, retries=2)
    client._sleep = lambda _seconds: None
    result = client.jobs.create_batch([{"name": batch_name, "type": "noop", "delay_seconds": 3600}] * 2)
    assert (result.created, result.existing) == (0, 2)  # the retry found the jobs the lost answer made
    assert names(system.settings, batch_name) == 2


def test_a_request_that_is_not_safe_to_repeat_is_not_retried(system: System, proxy: DroppingProxy) -> None:
    job = system.client().jobs.create("once", "noop", delay_seconds=3600)
    client = system.client(url=proxy.url, retries=3)
    proxy.drops = 1
    with pytest.raises(errors.Unavailable) as lost:
        client.jobs.trigger(job.id)
    assert "not retried" in str(lost.value) and lost.value.attempts == 1
    assert proxy.connections == 1
    assert system.client().jobs.get(job.id).original_execute_at is not None  # it was applied, once


def test_a_cancel_retried_after_its_answer_was_lost_returns_the_cancelled_job(system: System,
                                                                              proxy: DroppingProxy) -> None:
    job = system.client().jobs.create("cancel-once", "noop", delay_seconds=3600)
    client = system.client(url=proxy.url, retries=2)
    client._sleep = lambda _seconds: None
    proxy.drops = 1
    assert client.jobs.cancel(job.id).status == "CANCELLED"
    assert proxy.dropped == 1


# --- schedules and admin --------------------------------------------------------------------


def test_every_schedule_call_against_the_api(system: System) -> None:
    client = system.client()
    definition = {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                  "job": {"name": "export", "type": "noop"}}
    draft = client.schedules.preview_draft({**definition, "start_at": "2027-03-27T00:00:00+01:00"}, count=2)
    assert len(draft) == 2 and draft[1].note and "DST" in draft[1].note
    schedule = client.schedules.create(definition)
    assert schedule.cron == "30 2 * * *" and not schedule.paused and schedule.next_fire_at is not None
    assert [s.id for s in client.schedules.list(name="nightly").items] == [schedule.id]
    assert [s.id for s in client.schedules.iter_all(name="nightly", page_size=1)] == [schedule.id]
    assert client.schedules.get(schedule.id).on_time is not None
    assert len(client.schedules.preview(schedule.id, count=3)) == 3
    assert client.schedules.update(schedule.id, {"cron": "0 3 * * *"}).cron == "0 3 * * *"
    paused = client.schedules.pause(schedule.id)
    assert paused.paused and client.schedules.list(paused=True).items[0].id == schedule.id
    assert not client.schedules.resume(schedule.id).paused
    with pytest.raises(errors.Unprocessable) as invalid:
        client.schedules.create({**definition, "cron": "61 * * * *"})
    assert "cron" in dict(invalid.value.field_errors())
    client.schedules.delete(schedule.id)
    with pytest.raises(errors.NotFound):
        client.schedules.get(schedule.id)


def test_every_admin_call_against_the_api(system: System) -> None:
    admin = system.client().admin
    tenant = f"t{uuid.uuid4().hex[:6]}"
    made = admin.create_tenant(tenant, max_batch_jobs=50)
    assert made.name == tenant and made.max_batch_jobs == 50
    assert admin.get_tenant(tenant).max_batch_jobs == 50
    assert admin.update_tenant(tenant, max_batch_jobs=None).max_batch_jobs is None
    assert tenant in [t.name for t in admin.tenants()]
    secret = admin.signing_secret(tenant)
    rotated = admin.rotate_signing_secret(tenant)
    assert rotated.previous == secret.current and rotated.current != secret.current
    assert admin.drop_previous_signing_secret(tenant).previous is None
    key = admin.create_key(tenant, "writer", "ci")
    assert key.key and key.key.startswith("cq_")
    assert Client(system.url, key.key).jobs.list().items == []  # the new key works, on its own tenant
    assert key.id in [k.id for k in admin.keys(tenant)]
    assert admin.revoke_key(key.id).revoked_at is not None
    with pytest.raises(errors.Unauthorized):
        Client(system.url, key.key).jobs.list()
    records = admin.audit(action="keys.create", target_id=key.id)
    assert [r.action for r in records.items] == ["keys.create"] and records.items[0].outcome == 201


# --- the event stream ----------------------------------------------------------------------


def test_events_resume_with_last_event_id_after_the_server_ends_a_stream() -> None:
    """Against a stream served over HTTP in the shape of the events contract (until the API's
    own endpoint exists, tests/integration/test_cli_client.py follows it there)."""
    changes = [{"id": n, "job_id": f"job-{n}", "status": "RUNNING", "previous_status": "QUEUED",
                "at": "2026-11-24T13:00:00.000+00:00", "attempt": 1, "schedule_id": None, "name": "x",
                "type": "noop", "tenant": "default"} for n in range(1, 6)]
    seen_headers: list[str | None] = []
    seen_filters: list[list[str]] = []
    first_read = threading.Event()
    app = Flask("sse")

    @app.get("/api/events")
    def events() -> Response:
        import json

        seen_headers.append(request.headers.get("Last-Event-ID"))
        seen_filters.append(request.args.getlist("status"))
        after = int(request.headers.get("Last-Event-ID") or 0)
        chunk = [c for c in changes if c["id"] > after][:2]  # each stream ends after two

        def stream() -> Iterator[str]:
            yield "retry: 10\n: keep-alive\n\n"
            for n, change in enumerate(chunk):
                yield f"id: {change['id']}\nevent: job\ndata: {json.dumps(change)}\n\n"
                if after == 0 and n == 0:
                    # Hold the stream open until the client has read the first event: it must
                    # not wait for more bytes before handing an event over.
                    assert first_read.wait(5), "the client did not get the first event while the stream was open"

        return Response(stream(), mimetype="text/event-stream")

    server, thread = serve(app)
    try:
        client = Client(f"http://127.0.0.1:{server.server_port}", "t", timeout=5)
        got = []
        for event in itertools.islice(client.events(status=["RUNNING"]), 5):
            got.append(event)
            first_read.set()
    finally:
        server.shutdown()
        thread.join(10)
    assert [e.id for e in got] == [1, 2, 3, 4, 5] and [e.event_id for e in got] == ["1", "2", "3", "4", "5"]
    assert got[0].job_id == "job-1" and got[0].previous_status == "QUEUED" and got[0].at.year == 2026
    assert seen_headers[:3] == [None, "2", "4"] and seen_filters[0] == ["RUNNING"]


def test_events_follow_the_api_stream_and_resume_across_its_end(system: System) -> None:
    """The real GET /api/events, with streams of one second: a change made while no stream is
    open comes when the client reconnects with Last-Event-ID."""
    from dataclasses import replace

    app = create_app(replace(system.settings, events_stream_seconds=1.0))
    server, thread = serve(app)
    client = Client(f"http://127.0.0.1:{server.server_port}", system.admin)
    job = client.jobs.create("streamed", "noop", delay_seconds=3600)
    got: list[Any] = []
    follower = threading.Thread(target=lambda: got.extend(itertools.islice(client.events(job_id=job.id), 2)),
                                daemon=True)
    try:
        follower.start()
        hub = lambda: app.extensions.get("chronoq-events")  # noqa: E731
        wait_for(lambda: hub() is not None and hub().streams == 1, timeout=10, what="the stream to open")
        set_status(system.settings, job.id, "RUNNING")
        wait_for(lambda: got or None, timeout=10, what="the first change")
        wait_for(lambda: hub().streams == 0, timeout=10, what="the stream to end")
        set_status(system.settings, job.id, "FAILED")  # no stream is open now
        follower.join(15)
        assert not follower.is_alive()
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["chronoq"].close()
    assert [(e.job_id, e.previous_status, e.status) for e in got] == [
        (job.id, "SCHEDULED", "RUNNING"), (job.id, "RUNNING", "FAILED")]
    assert got[0].id < got[1].id and got[1].event_id is not None


def test_client_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOQ_URL", "http://api.example:9000/")
    monkeypatch.setenv("CHRONOQ_TOKEN", "cq_x")
    client = Client()
    assert (client.url, client.token) == ("http://api.example:9000", "cq_x")
    with pytest.raises(ValueError, match="not an http"):
        Client("ftp://x")
    # the services' loader leaves the client's variables alone
    assert load_settings({"CHRONOQ_URL": "http://x", "CHRONOQ_TOKEN": "y"}) == load_settings({})

