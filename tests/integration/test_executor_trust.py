"""The executor trusts the database, not the message: against real PostgreSQL and a real
(tansu) broker, a dispatch altered on the topic runs what the job's row says or nothing, secret
values travel redacted and are revealed only for the handler, and each run gets the signing
secrets of its job's tenant (:mod:`executor_service.tenants`)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from sqlalchemy import event, update

from common.core import secrets, signing, store
from common.core.messages import DispatchMessage, encode_dispatch
from common.core.models import Job, Tenant
from common.core.tenancy import ensure_tenant, signing_secrets
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import get_engine, session_scope
from common.infra.kafka import Producer
from executor_service.context import HandlerContext, PermanentFailure
from executor_service.tenants import SigningUnavailable, Tenants
from tests.integration.test_executor_service import Running, Topic, Updates, soon, wait_for

KEY = secrets.new_key()
OTHER_KEY = secrets.new_key()
CLEAR = "s3cr3t-api-key-value"

#: Runs of the ``capture`` job type: job id → (payload, context) as the handler got them.
CAPTURED: dict[uuid.UUID, tuple[dict[str, Any], HandlerContext]] = {}


async def capture(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """A user handler (``CHRONOQ_HANDLERS``) that keeps what it was given."""
    CAPTURED[context.job_id] = (payload, context)
    return {"ok": True}


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers 200 to every request on 127.0.0.1 and keeps its headers and body."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        kept = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kept.append(Delivery(self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll: shutdown() waits for it, at the end of each test.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def trusted(settings: Settings) -> Settings:
    return replace(settings, secret_key=KEY, handlers=(f"capture={__name__}:capture",))


def tenant_name(prefix: str) -> str:
    """A tenant of this test's own: the shared executor caches the signing secrets of the
    tenants it has seen for a minute, across tests (and the database is emptied between)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def trust_settings(settings: Settings, module_kafka_settings: Settings) -> Settings:
    """This module's topics, on the database emptied for this test: one executor serves every
    test (a group join costs seconds), each keeps to jobs and tenants of its own."""
    return trusted(module_kafka_settings)


@pytest.fixture(scope="module")
def shared_executor(module_kafka_settings: Settings) -> Iterator[Running]:
    running = Running(trusted(module_kafka_settings))
    yield running
    running.stop()


@pytest.fixture
def executor(trust_settings: Settings, shared_executor: Running) -> Running:
    return shared_executor.mark()


@pytest.fixture
def updates(trust_settings: Settings) -> Iterator[Updates]:
    reader = Updates(trust_settings, trust_settings.topic_updates)
    yield reader
    reader.close()


@pytest.fixture
def producer(trust_settings: Settings) -> Iterator[Producer]:
    made = Producer(trust_settings)
    yield made
    made.close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    good, evil = Receiver(), Receiver()
    yield good, evil
    good.close()
    evil.close()


def dispatch(settings: Settings, *, execute_at: datetime, type: str = "noop", payload: dict[str, Any] | None = None,
             tenant: str = "default", max_retries: int = 2) -> DispatchMessage:
    """Insert a job and claim it as the scanner does; returns the dispatch it publishes."""
    job_id = uuid.uuid4()
    with session_scope(settings) as session:
        session.add(Job(id=job_id, tenant=tenant, name=f"trust-{type}", type=type, payload=payload or {},
                        execute_at=execute_at, max_retries=max_retries, timeout_seconds=10.0))
    with session_scope(settings) as session:
        (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=settings.lease_seconds).messages
    assert message.tenant == tenant
    return message


def send(settings: Settings, producer: Producer, message: DispatchMessage) -> None:
    producer.send_and_wait(settings.topic_jobs, message.key, encode_dispatch(message))


def test_a_dispatch_altered_on_the_topic_runs_what_the_row_says(
    trust_settings: Settings, executor: Running, updates: Updates, producer: Producer,
    receivers: tuple[Receiver, Receiver],
) -> None:
    good, evil = receivers
    at = soon(2.0)
    retargeted = dispatch(trust_settings, type="http", payload={"url": f"{good.url}/good"}, execute_at=at)
    retyped = dispatch(trust_settings, execute_at=at)  # noop
    send(trust_settings, producer, replace(retargeted, payload={"url": f"{evil.url}/evil", "method": "POST"}))
    send(trust_settings, producer, replace(retyped, type="shell", payload={"argv": ["sh", "-c", "touch /tmp/owned"]}))
    for message in (retargeted, retyped):
        assert updates.wait_status(message.job_id, "SUCCESS")[-1].attempt == 1
    assert [d.path for d in good.deliveries] == ["/good"]
    assert evil.deliveries == []
    assert updates.of(retyped.job_id)[-1].output == {"ok": True}  # the row's noop ran, not the shell


def test_a_dispatch_naming_another_tenant_than_its_jobs_is_not_claimed(
    trust_settings: Settings, executor: Running, updates: Updates, producer: Producer,
) -> None:
    message = dispatch(trust_settings, tenant=tenant_name("acme"), execute_at=soon(1.0))
    send(trust_settings, producer, replace(message, tenant="mallory"))
    wait_for(lambda: executor.count("skipped") == 1, 20, "the claim of the forged dispatch to fail")
    with session_scope(trust_settings) as session:
        job = session.get(Job, message.job_id)
        assert job is not None and (job.status, job.attempts) == ("QUEUED", 0)
    assert updates.of(message.job_id) == []
    send(trust_settings, producer, message)  # the genuine dispatch still runs
    assert [u.status for u in updates.wait_status(message.job_id, "SUCCESS")] == ["RUNNING", "SUCCESS"]


def test_secret_values_are_revealed_for_the_handler_only_and_deliveries_are_signed(
    trust_settings: Settings, executor: Running, updates: Updates, producer: Producer,
    receivers: tuple[Receiver, Receiver],
) -> None:
    good, _ = receivers
    acme = tenant_name("acme")
    keyring = secrets.Keyring.from_settings(trust_settings)
    with session_scope(trust_settings) as session:
        ensure_tenant(session, acme, keyring, now=utcnow())
    headers = {"X-Api-Key": {"secret": CLEAR}, "Accept": "text/plain"}
    sealed = secrets.seal("http", {"url": f"{good.url}/hook", "headers": headers}, keyring)
    foreign = secrets.seal("http", {"url": f"{good.url}/never", "headers": headers}, secrets.Keyring([OTHER_KEY]))
    at = soon(1.5)
    message = dispatch(trust_settings, type="http", payload=sealed, tenant=acme, execute_at=at)
    unreadable = dispatch(trust_settings, type="http", payload=foreign, tenant=acme, execute_at=at)
    for each in (message, unreadable):
        assert each.payload["headers"] == {"X-Api-Key": "***", "Accept": "text/plain"}
        send(trust_settings, producer, each)
    updates.wait_status(message.job_id, "SUCCESS")
    (delivery,) = good.deliveries
    assert delivery.path == "/hook" and delivery.headers["X-Api-Key"] == CLEAR
    with session_scope(trust_settings) as session:
        (secret,) = signing_secrets(session, {acme}, keyring)[acme]
    signing.verify(
        delivery.headers[signing.HEADER], secret, job_id=message.job_id, attempt=1, token=message.token,
        body=delivery.body, now=time.time(),
    )
    # Sealed with a key this executor does not have: fails at once, naming the field, no retry.
    failed = updates.wait_status(unreadable.job_id, "FAILED")
    assert [(u.status, u.attempt) for u in failed] == [("RUNNING", 1), ("FAILED", 1)]
    assert "payload.headers.X-Api-Key" in (failed[-1].error or "") and CLEAR not in (failed[-1].error or "")
    jobs = Topic(trust_settings, trust_settings.topic_jobs)
    ids = [str(each.job_id).encode() for each in (message, unreadable)]  # the module's topic: this test's records
    try:
        raw = b"".join(wait_for(
            lambda: (lambda vs: vs if len(vs) >= 2 else None)([v for v in jobs.read() if any(i in v for i in ids)]),
            20, "the dispatches"))
    finally:
        jobs.close()
    assert b'"X-Api-Key":"***"' in raw and CLEAR.encode() not in raw and b"gAAAA" not in raw


def test_each_run_gets_the_signing_secrets_of_its_jobs_tenant(
    trust_settings: Settings, executor: Running, updates: Updates, producer: Producer,
) -> None:
    keyring = secrets.Keyring.from_settings(trust_settings)
    # acme is rotating: two secrets; old has no row, as "default" had none for the jobs from
    # before tenants (a name of this test's own: the executor has read "default" for others).
    acme_name, old_name = tenant_name("acme"), tenant_name("old")
    with session_scope(trust_settings) as session:
        ensure_tenant(session, acme_name, keyring, now=utcnow())
        session.execute(update(Tenant).where(Tenant.name == acme_name).values(
            previous_signing_secret=secrets.seal_text("whsec_previous", keyring),
        ))
    loads = executor.executor.tenants.loads
    at = soon(2.0)
    acme = dispatch(trust_settings, type="capture", payload={"n": 1}, tenant=acme_name, execute_at=at)
    legacy = dispatch(trust_settings, type="capture", payload={"n": 2}, tenant=old_name, execute_at=at)
    for message in (acme, legacy):
        send(trust_settings, producer, message)
    for message in (acme, legacy):
        updates.wait_status(message.job_id, "SUCCESS")
    with session_scope(trust_settings) as session:
        stored = signing_secrets(session, {acme_name, old_name}, keyring)
    assert len(stored[acme_name]) == 2 and stored[acme_name][1] == "whsec_previous"
    assert len(stored[old_name]) == 1  # created by the executor, as for the jobs from before tenants
    for message, tenant, n in ((acme, acme_name, 1), (legacy, old_name, 2)):
        payload, context = CAPTURED.pop(message.job_id)
        assert payload == {"n": n}
        assert (context.tenant, context.dispatch_token, context.signing_secrets) == (
            tenant, message.token, stored[tenant],
        )
    assert executor.executor.tenants.loads == loads + 1  # one batch, one read for both tenants


@pytest.fixture
def tenant_reads(database: Settings) -> Iterator[list[str]]:
    """The statements that read the tenants table, as they are sent."""
    reads: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM tenants" in statement:
            reads.append(statement)

    engine = get_engine(database)
    event.listen(engine, "before_cursor_execute", before)
    yield reads
    event.remove(engine, "before_cursor_execute", before)


def test_the_cache_reads_its_tenants_once_a_minute_in_one_statement(
    database: Settings, tenant_reads: list[str],
) -> None:
    keyring = secrets.Keyring([KEY])
    clock = [1000.0]
    tenants = Tenants(keyring, monotonic=lambda: clock[0])
    with session_scope(database) as session:
        ensure_tenant(session, "acme", keyring, now=utcnow())
        ensure_tenant(session, "zeta", keyring, now=utcnow())
        first = signing_secrets(session, {"acme", "zeta"}, keyring)
    del tenant_reads[:]
    with session_scope(database) as session:
        tenants.accept(tenants.load(session, {"acme", "zeta"}, now=utcnow()))
    assert len(tenant_reads) == 1
    assert tenants.secrets("acme") == first["acme"] and tenants.secrets("zeta") == first["zeta"]
    with session_scope(database) as session:
        session.execute(update(Tenant).where(Tenant.name == "acme").values(
            signing_secret=secrets.seal_text("whsec_rotated", keyring),
        ))
    clock[0] += 59.0
    with session_scope(database) as session:  # still fresh: no read at all
        tenants.accept(tenants.load(session, {"acme", "zeta"}, now=utcnow()))
    assert len(tenant_reads) == 1 and tenants.secrets("acme") == first["acme"]
    clock[0] += 1.5
    with session_scope(database) as session:  # a minute on: both read again, in one statement
        tenants.accept(tenants.load(session, {"acme", "zeta"}, now=utcnow()))
    assert len(tenant_reads) == 2 and tenants.secrets("acme") == ("whsec_rotated",)


def test_a_tenant_without_a_row_is_created_and_nothing_is_kept_before_the_commit(database: Settings) -> None:
    keyring = secrets.Keyring([KEY])
    tenants = Tenants(keyring)
    with pytest.raises(RuntimeError):
        with session_scope(database) as session:  # the claim's transaction fails after the read
            tenants.load(session, {"default"}, now=utcnow())
            raise RuntimeError("claim rolled back")
    with session_scope(database) as session:
        assert session.get(Tenant, "default") is None
        loaded = tenants.load(session, {"default"}, now=utcnow())
    with pytest.raises(SigningUnavailable, match="not read yet"):
        tenants.secrets("default")
    tenants.accept(loaded)
    with session_scope(database) as session:
        assert tenants.secrets("default") == signing_secrets(session, {"default"}, keyring)["default"]


def test_a_signing_secret_this_executor_cannot_open_fails_its_tenants_runs(database: Settings) -> None:
    with session_scope(database) as session:
        ensure_tenant(session, "acme", secrets.Keyring([OTHER_KEY]), now=utcnow())
    tenants = Tenants(secrets.Keyring([KEY]))
    with session_scope(database) as session:
        tenants.accept(tenants.load(session, {"acme"}, now=utcnow()))
    with pytest.raises(PermanentFailure, match="signing secret of tenant 'acme' cannot be opened") as failure:
        tenants.secrets("acme")
    assert "whsec_" not in str(failure.value)


def test_only_http_runs_need_the_signing_secret(database: Settings) -> None:
    """A tenant whose signing secret this executor cannot open still runs its other jobs; its
    http jobs, which must be signed, fail with the reason."""
    from executor_service.runner import prepare

    with session_scope(database) as session:
        ensure_tenant(session, "acme", secrets.Keyring([OTHER_KEY]), now=utcnow())
    keyring = secrets.Keyring([KEY])
    tenants = Tenants(keyring)
    with session_scope(database) as session:
        tenants.accept(tenants.load(session, {"acme"}, now=utcnow()))
    message = DispatchMessage(job_id=uuid.uuid4(), token=1, name="n", type="noop", payload={}, execute_at=utcnow(),
                              attempt=1, max_retries=0, timeout_seconds=5.0, tenant="acme")
    noop = prepare(message, store.ClaimedRow("noop", {}, "acme", 5.0, 0), settings=database, keyring=keyring,
                   tenants=tenants)
    assert noop.problem is None and noop.signing_secrets == ()
    http = prepare(message, store.ClaimedRow("http", {"url": "https://example.com/"}, "acme", 5.0, 0),
                   settings=database, keyring=keyring, tenants=tenants)
    assert isinstance(http.problem, PermanentFailure) and "cannot be opened" in str(http.problem)
