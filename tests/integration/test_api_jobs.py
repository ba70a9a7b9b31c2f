"""The HTTP API against a real PostgreSQL (and, for direct dispatch, a real broker)."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

import api.create
from api import create_app
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.core.messages import decode_dispatch
from common.core.models import Job, JobAttempt
from common.core.states import JobStatus
from tests.helpers import add_job, count_jobs, get_job, wait_for

UNREACHABLE_DB = "postgresql+psycopg2://postgres@127.0.0.1:1/x"


def make_client(settings: Settings) -> Iterator[FlaskClient]:
    app: Flask = create_app(settings)
    yield app.test_client()
    app.extensions["chronoq"].close()


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    yield from make_client(settings)


def in_(seconds: float) -> str:
    return (utcnow() + timedelta(seconds=seconds)).isoformat()


def job_body(**changes: Any) -> dict[str, Any]:
    body = {"name": "ping", "type": "noop", "payload": {"n": 1}, "execute_at": in_(3600)}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def insert_job(settings: Settings, **fields: Any) -> uuid.UUID:
    return add_job(settings, due_in=3600, **{"name": "direct", "timeout_seconds": 60.0, **fields})


def assert_error(response: Any, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code and body["status"] and body["message"]
    return body


# --- create -------------------------------------------------------------------------------


def test_create_returns_201_with_location_and_stores_the_job(client: FlaskClient, settings: Settings) -> None:
    at = (utcnow() + timedelta(hours=2)).astimezone(timezone(timedelta(hours=5)))
    response = client.post("/api/jobs", json=job_body(
        execute_at=at.isoformat(), max_retries=2, timeout_seconds=30, priority=7, misfire_grace_seconds=60,
        metadata={"team": "ops"}, type="http", payload={"url": "https://example.com/hook"},
    ))
    assert response.status_code == 201, response.get_json()
    job = response.get_json()
    assert response.headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "SCHEDULED" and job["attempts"] == 0
    assert job["execute_at"].endswith("+00:00")
    assert datetime.fromisoformat(job["execute_at"]) == at  # exact, microseconds included
    assert (job["max_retries"], job["timeout_seconds"], job["priority"]) == (2, 30.0, 7)
    assert job["metadata"] == {"team": "ops"} and job["payload"] == {"url": "https://example.com/hook"}
    for field in ("started_at", "finished_at", "next_attempt_at", "output", "error", "executor"):
        assert job[field] is None
    with session_scope(settings) as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row is not None and row.name == "ping" and row.meta == {"team": "ops"}
        assert row.idempotency_key is None


def test_create_with_delay_seconds_and_defaults(client: FlaskClient, settings: Settings) -> None:
    before = utcnow()
    job = client.post("/api/jobs", json=job_body(execute_at=..., delay_seconds=600)).get_json()
    due = datetime.fromisoformat(job["execute_at"])
    assert before + timedelta(seconds=599) < due < utcnow() + timedelta(seconds=601)
    assert job["max_retries"] == settings.default_max_retries
    assert job["timeout_seconds"] == settings.default_timeout_seconds


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"name": ...}, "name"),
        ({"execute_at": "2031-01-01T00:00:00"}, "execute_at"),  # naive
        ({"execute_at": "2001-01-01T00:00:00Z"}, "execute_at"),  # past
        ({"execute_at": ..., "delay_seconds": ...}, "execute_at"),
        ({"delay_seconds": 10}, "delay_seconds"),  # both
        ({"type": "nope"}, "type"),
        ({"type": "shell", "payload": {"argv": ["true"]}}, "type"),  # disabled
        ({"type": "http", "payload": {"method": "GET"}}, "payload"),
        ({"max_retries": 11}, "max_retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"payload": {"blob": "x" * 70_000}}, "payload"),  # > CHRONOQ_MAX_PAYLOAD_BYTES
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(
    client: FlaskClient, settings: Settings, changes: dict[str, Any], field: str
) -> None:
    body = assert_error(client.post("/api/jobs", json=job_body(**changes)), 422)
    assert field in body["errors"]["json"]
    assert count_jobs(settings) == 0


def test_strings_postgresql_cannot_store_are_a_422_not_a_500(client: FlaskClient, settings: Settings) -> None:
    assert "name" in assert_error(client.post("/api/jobs", json=job_body(name="a\x00b")), 422)["errors"]["json"]
    assert "name" in assert_error(client.get("/api/jobs?name=a%00b"), 422)["errors"]["query"]
    far = assert_error(client.post("/api/jobs", json=job_body(execute_at="9999-12-31T23:59:59-05:00")), 422)
    assert "execute_at" in far["errors"]["json"]
    assert count_jobs(settings) == 0


def test_payload_errors_name_the_payload_field(client: FlaskClient) -> None:
    body = assert_error(client.post("/api/jobs", json=job_body(type="http", payload={})), 422)
    assert body["errors"]["json"]["payload"] == {"url": ["Missing data for required field."]}


def test_invalid_json_is_a_400(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/api/jobs", data='{"name": ', content_type="application/json")
    assert assert_error(response, 400)["errors"] == {"json": ["Invalid JSON body."]}
    assert count_jobs(settings) == 0


def test_a_body_that_is_not_json_is_a_415(client: FlaskClient, settings: Settings) -> None:
    assert_error(client.post("/api/jobs", data="name=x", content_type="application/x-www-form-urlencoded"), 415)
    assert count_jobs(settings) == 0


def test_oversized_body_is_a_413(settings: Settings) -> None:
    for small in make_client(replace(settings, max_request_bytes=2000)):
        response = small.post("/api/jobs", json=job_body(payload={"blob": "x" * 5000}))
        assert "CHRONOQ_MAX_REQUEST_BYTES" in assert_error(response, 413)["message"]
    assert count_jobs(settings) == 0


def test_database_down_is_a_503(settings: Settings) -> None:
    for down in make_client(replace(settings, database_url=UNREACHABLE_DB)):
        started = time.monotonic()
        body = assert_error(down.post("/api/jobs", json=job_body()), 503)
        assert "database" in body["message"]
        assert_error(down.get("/api/jobs"), 503)
        assert time.monotonic() - started < 10


# --- idempotency --------------------------------------------------------------------------


def test_idempotency_key_repeat_returns_the_first_job(client: FlaskClient, settings: Settings) -> None:
    body = job_body()
    first = client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    # Same content, keys in another order: the same request.
    again = client.post("/api/jobs", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count_jobs(settings) == 1
    with session_scope(settings) as session:
        row = session.get(Job, uuid.UUID(first.get_json()["id"]))
        assert row.idempotency_key == "k-1" and len(row.request_hash) == 64


def test_idempotency_key_with_another_body_is_rejected(client: FlaskClient, settings: Settings) -> None:
    assert client.post("/api/jobs", json=job_body(), headers={"Idempotency-Key": "k-2"}).status_code == 201
    response = client.post("/api/jobs", json=job_body(name="other"), headers={"Idempotency-Key": "k-2"})
    body = assert_error(response, 422)
    assert "different request" in body["message"]
    assert "Idempotency-Key" in body["errors"]["headers"]
    assert count_jobs(settings) == 1


def test_idempotency_key_longer_than_200_is_rejected(client: FlaskClient, settings: Settings) -> None:
    body = assert_error(client.post("/api/jobs", json=job_body(), headers={"Idempotency-Key": "k" * 201}), 422)
    assert "Idempotency-Key" in body["errors"]["headers"]
    assert count_jobs(settings) == 0


def test_idempotency_race_is_settled_by_the_unique_key(
    client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = job_body()
    first = client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-race"}).get_json()
    # The second request's lookup runs before the first one committed: it sees nothing, its
    # insert hits the unique constraint, and it must answer with the winner.
    real = api.create._by_key
    calls: list[str] = []

    def late_lookup(session: Any, tenant: str, key: str) -> Job | None:
        calls.append(key)
        return None if len(calls) == 1 else real(session, tenant, key)

    monkeypatch.setattr(api.create, "_by_key", late_lookup)
    response = client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-race"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == first["id"]
    assert len(calls) == 2 and count_jobs(settings) == 1


# --- read ---------------------------------------------------------------------------------


def test_list_pages_through_everything_once_in_order(client: FlaskClient, settings: Settings) -> None:
    base = utcnow() + timedelta(hours=1)
    # Pairs share an execute_at, so the id must break ties for the keyset to be exact.
    ids = {insert_job(settings, execute_at=base + timedelta(seconds=i // 2)) for i in range(8)}
    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        query = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/jobs", query_string=query).get_json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [job["id"] for job in seen] != [] and {uuid.UUID(job["id"]) for job in seen} == ids
    assert len(seen) == len(ids)
    keys = [(job["execute_at"], job["id"]) for job in seen]
    assert keys == sorted(keys)


def test_list_filters(client: FlaskClient, settings: Settings) -> None:
    base = utcnow() + timedelta(hours=1)
    early = insert_job(settings, name="a", type="noop", execute_at=base)
    late = insert_job(settings, name="b", type="sleep", execute_at=base + timedelta(hours=1))
    running = insert_job(settings, name="a", type="noop", execute_at=base, status="RUNNING")
    failed = insert_job(settings, name="c", type="fail", execute_at=base, status="FAILED")

    def ids(**query: Any) -> set[uuid.UUID]:
        response = client.get("/api/jobs", query_string=query)
        assert response.status_code == 200, response.get_json()
        return {uuid.UUID(job["id"]) for job in response.get_json()["items"]}

    assert ids() == {early, late, running, failed}
    assert ids(status="RUNNING") == {running}
    assert ids(status="running,failed") == {running, failed}
    assert client.get("/api/jobs?status=RUNNING&status=FAILED").status_code == 200
    assert ids(type="noop") == {early, running}
    assert ids(name="a", status="SCHEDULED") == {early}
    cut = (base + timedelta(minutes=30)).isoformat()
    assert ids(execute_after=cut) == {late}
    assert ids(execute_before=cut) == {early, running, failed}


@pytest.mark.parametrize(
    "query, field",
    [("status=DONE", "status"), ("cursor=bm9wZQ", "cursor"), ("limit=0", "limit"), ("limit=501", "limit"),
     ("execute_after=2030-01-01T00:00:00", "execute_after")],
)
def test_bad_list_query_is_a_422_naming_the_parameter(client: FlaskClient, query: str, field: str) -> None:
    assert field in assert_error(client.get(f"/api/jobs?{query}"), 422)["errors"]["query"]


def test_get_job_and_unknown_ids(client: FlaskClient) -> None:
    created = client.post("/api/jobs", json=job_body()).get_json()
    response = client.get(f"/api/jobs/{created['id']}")
    assert response.status_code == 200 and response.get_json() == created
    missing = uuid.uuid4()
    assert assert_error(client.get(f"/api/jobs/{missing}"), 404)["message"] == f"No job with id '{missing}'"
    assert assert_error(client.get("/api/jobs/not-a-uuid"), 404)["message"] == "No job with id 'not-a-uuid'"


def test_attempts_are_listed_in_order(client: FlaskClient, settings: Settings) -> None:
    job_id = insert_job(settings, status="RETRYING", attempts=2)
    now = utcnow()
    with session_scope(settings) as session:
        session.add(JobAttempt(job_id=job_id, attempt=2, dispatch_token=1, status="RUNNING", started_at=now,
                               executor="ex-2"))
        session.add(JobAttempt(job_id=job_id, attempt=1, dispatch_token=1, status="FAILED", started_at=now,
                               finished_at=now, error="boom", output={"code": 500}, executor="ex-1"))
    items = client.get(f"/api/jobs/{job_id}/attempts").get_json()["items"]
    assert [a["attempt"] for a in items] == [1, 2]
    assert items[0] | {"started_at": None, "finished_at": None} == {
        "attempt": 1, "status": "FAILED", "error": "boom", "output": {"code": 500}, "executor": "ex-1",
        "dispatch_token": 1, "started_at": None, "finished_at": None,
    }
    assert items[0]["finished_at"].endswith("+00:00") and items[1]["finished_at"] is None
    assert_error(client.get(f"/api/jobs/{uuid.uuid4()}/attempts"), 404)


def test_stats_count_every_status_and_type(client: FlaskClient, settings: Settings) -> None:
    insert_job(settings, type="noop")
    insert_job(settings, type="noop", execute_at=utcnow() - timedelta(minutes=5))  # overdue
    insert_job(settings, type="sleep", status="SUCCESS", execute_at=utcnow() - timedelta(minutes=5))
    response = client.get("/api/jobs/stats")
    assert response.status_code == 200
    stats = response.get_json()
    assert stats["by_status"] == {s.value: 0 for s in JobStatus} | {"SCHEDULED": 2, "SUCCESS": 1}
    assert stats["by_type"] == {"noop": 2, "sleep": 1}
    assert stats["overdue"] == 1 and stats["total"] == 3


# --- cancel -------------------------------------------------------------------------------


def test_cancel_a_scheduled_job(client: FlaskClient, settings: Settings) -> None:
    job_id = client.post("/api/jobs", json=job_body()).get_json()["id"]
    response = client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 200
    assert response.get_json()["status"] == "CANCELLED" and response.get_json()["finished_at"]
    with session_scope(settings) as session:
        assert session.get(Job, uuid.UUID(job_id)).status == "CANCELLED"
    again = assert_error(client.delete(f"/api/jobs/{job_id}"), 409)
    assert "already CANCELLED" in again["message"]


@pytest.mark.parametrize("status", ["RUNNING", "SUCCESS", "FAILED"])
def test_cancel_a_started_or_finished_job_is_a_409(client: FlaskClient, settings: Settings, status: str) -> None:
    job_id = insert_job(settings, status=status)
    assert status in assert_error(client.delete(f"/api/jobs/{job_id}"), 409)["message"]
    with session_scope(settings) as session:
        assert session.get(Job, job_id).status == status


def test_cancel_an_unknown_job_is_a_404(client: FlaskClient) -> None:
    missing = uuid.uuid4()
    assert str(missing) in assert_error(client.delete(f"/api/jobs/{missing}"), 404)["message"]


# --- operations ---------------------------------------------------------------------------


def test_health_and_readiness(client: FlaskClient, settings: Settings) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok"}
    for down in make_client(replace(settings, database_url=UNREACHABLE_DB)):
        assert down.get("/healthz").status_code == 200
        assert_error(down.get("/readyz"), 503)


def test_openapi_document_and_docs_page(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/attempts", "/api/jobs/stats",
                 "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert {"get", "post"} <= set(spec["paths"]["/api/jobs"])
    page = client.get("/docs").get_data(as_text=True)
    assert "swagger-ui" in page


def test_the_docs_page_loads_nothing_from_the_internet(client: FlaskClient) -> None:
    """Every script and style of /docs is served by the API itself (a machine without
    internet, or a browser that blocks third parties, gets the page)."""
    page = client.get("/docs").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 1000 and "max-age=86400" in response.headers["Cache-Control"]
    assert client.get("/docs/assets/swagger-ui-bundle.js").mimetype in ("text/javascript", "application/javascript")
    assert_error(client.get("/docs/assets/../../../etc/passwd"), 404)
    assert_error(client.get("/docs/assets/nothing.js"), 404)


def test_unknown_routes_and_methods_have_the_json_error_shape(client: FlaskClient) -> None:
    assert_error(client.get("/api/nothing"), 404)
    response = client.put("/api/jobs")
    assert_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_metrics_count_requests_and_creations(client: FlaskClient) -> None:
    client.post("/api/jobs", json=job_body())
    client.get("/api/jobs/stats")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'chronoq_api_jobs_created_total{type="noop"} 1.0' in text
    assert 'chronoq_api_requests_total{endpoint="/api/jobs",method="POST",status="201"} 1.0' in text


# --- direct dispatch ----------------------------------------------------------------------


def consume_dispatches(settings: Settings, job_id: str, timeout_s: float = 30) -> list[Any]:
    """Every dispatch of ``job_id`` on the jobs topic, read to the topic's end: call it after the
    app was closed (its producer flushed), so nothing is still on its way."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    found: list[Any] = []
    try:
        partitions = [TopicPartition(settings.topic_jobs, p)
                      for p in sorted(consumer.partitions_for_topic(settings.topic_jobs) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{settings.topic_jobs} was not read to its end within {timeout_s}s"
            for batch in consumer.poll(timeout_ms=500).values():
                found += [m for m in map(decode_dispatch, (r.value for r in batch)) if str(m.job_id) == job_id]
    finally:
        consumer.close()
    return found


def test_a_job_due_soon_is_dispatched_by_the_api(kafka_settings: Settings) -> None:
    # One-minute windows as in production: due in 3 s is always before the scan horizon, due
    # in an hour never.
    settings = replace(kafka_settings, scan_interval_seconds=60.0)
    for client in make_client(settings):
        soon = client.post("/api/jobs", json=job_body(execute_at=..., delay_seconds=3))
        assert soon.status_code == 201
        assert soon.get_json()["status"] == "QUEUED"
        later = client.post("/api/jobs", json=job_body(execute_at=in_(3600)))
        assert later.get_json()["status"] == "SCHEDULED"
        # The API answers without waiting for Kafka; the acknowledgement is counted when it comes.
        published = 'chronoq_api_direct_dispatches_total{outcome="published"} 1.0'
        wait_for(lambda: published in client.get("/metrics").get_data(as_text=True), timeout=15, what=published)
    job_id = soon.get_json()["id"]
    with session_scope(settings) as session:
        assert session.get(Job, uuid.UUID(job_id)).status == "QUEUED"
        assert session.get(Job, uuid.UUID(later.get_json()["id"])).status == "SCHEDULED"
    messages = consume_dispatches(settings, job_id)
    assert len(messages) == 1
    assert messages[0].token == 1 and messages[0].attempt == 1
    assert messages[0].execute_at == datetime.fromisoformat(soon.get_json()["execute_at"])
    assert consume_dispatches(settings, later.get_json()["id"]) == []


def test_a_direct_dispatch_kafka_refuses_later_is_handed_back_to_the_scanner(settings: Settings) -> None:
    settings = replace(settings, scan_interval_seconds=60.0)
    sent: list[Future] = []

    class QueueingProducer:
        def send(self, topic: str, key: bytes, value: bytes) -> Future:
            sent.append(Future())
            return sent[-1]

    producer = QueueingProducer()
    for client in make_client(settings):
        client.application.extensions["chronoq"].producer = lambda: producer
        response = client.post("/api/jobs", json=job_body(execute_at=..., delay_seconds=3))
        assert response.get_json()["status"] == "QUEUED"  # claimed; its publish is under way
        job_id = uuid.UUID(response.get_json()["id"])
        sent[0].failure(KafkaTimeoutError("no acknowledgement"))
        wait_for(lambda: get_job(settings, job_id).status == "SCHEDULED", timeout=15, what="the hand-back")
        assert get_job(settings, job_id).lease_until is None
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'chronoq_api_direct_dispatches_total{outcome="unpublished"} 1.0' in metrics


def test_a_job_due_soon_is_stored_when_kafka_is_down(settings: Settings) -> None:
    down = replace(settings, kafka_bootstrap="127.0.0.1:1", scan_interval_seconds=60.0)
    for client in make_client(down):
        started = time.monotonic()
        response = client.post("/api/jobs", json=job_body(execute_at=..., delay_seconds=3))
        elapsed = time.monotonic() - started
        assert response.status_code == 201
        assert response.get_json()["status"] == "SCHEDULED"
        assert elapsed < 15
    with session_scope(settings) as session:
        assert session.get(Job, uuid.UUID(response.get_json()["id"])).status == "SCHEDULED"
