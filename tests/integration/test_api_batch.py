"""POST /api/jobs/batch against a real PostgreSQL (and, for its direct dispatch, a real broker)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

import api.create
from common.core.messages import decode_dispatch
from common.core.models import Job
from common.core.states import JobStatus
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.helpers import count_jobs, read_to_end
from tests.integration.test_api_jobs import assert_error, in_, job_body, make_client

BATCH = "/api/jobs/batch"


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    yield from make_client(settings)


def stored(settings: Settings) -> dict[str, Job]:
    with session_scope(settings) as session:
        jobs = list(session.scalars(select(Job)))
        for job in jobs:
            session.expunge(job)
    return {str(job.id): job for job in jobs}


def post_batch(client: FlaskClient, jobs: Any) -> dict[str, Any]:
    response = client.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# --- creating -----------------------------------------------------------------------------


def test_a_batch_stores_every_job_and_answers_in_request_order(client: FlaskClient, settings: Settings) -> None:
    jobs = [job_body(name=f"job-{i}", payload={"n": i}, priority=i % 3) for i in range(500)]
    body = post_batch(client, jobs)
    assert (body["created"], body["existing"], body["failed"]) == (500, 0, 0)
    assert [item["index"] for item in body["items"]] == list(range(500))
    assert {item["code"] for item in body["items"]} == {201}
    rows = stored(settings)
    assert set(rows) == {item["job"]["id"] for item in body["items"]}
    for item, sent in zip(body["items"], jobs):
        row = rows[item["job"]["id"]]
        assert (row.name, row.payload, row.priority, row.status) == (sent["name"], sent["payload"], sent["priority"],
                                                                      "SCHEDULED")
        assert item["job"]["status"] == "SCHEDULED"
        assert datetime.fromisoformat(item["job"]["execute_at"]) == datetime.fromisoformat(sent["execute_at"])
        assert row.idempotency_key is None and row.attempts == 0 and row.dispatch_token == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'chronoq_api_jobs_created_total{type="noop"} 500.0' in metrics


def test_a_batch_job_is_stored_like_a_single_create(client: FlaskClient, settings: Settings) -> None:
    fields = job_body(execute_at=..., delay_seconds=600, max_retries=2, misfire_grace_seconds=30,
                      metadata={"team": "ops"}, type="http", payload={"url": "https://example.com/hook"})
    single = client.post("/api/jobs", json=fields).get_json()
    item = post_batch(client, [fields])["items"][0]
    batched = client.get(f"/api/jobs/{item['job']['id']}").get_json()
    differs = {"id", "execute_at", "created_at", "updated_at"}  # delay_seconds counts from each request
    assert {k: v for k, v in batched.items() if k not in differs} == {k: v for k, v in single.items() if k not in differs}


def test_invalid_items_are_answered_with_their_fields_and_the_rest_is_stored(
    client: FlaskClient, settings: Settings
) -> None:
    jobs = [
        job_body(name="good-1"),
        job_body(name=...),
        job_body(execute_at="2031-01-01T00:00:00"),  # no offset
        job_body(type="nope"),
        "not an object",
        job_body(type="http", payload={}),
        job_body(execute_at=..., delay_seconds=5, name="good-2"),
        job_body(idempotency_key=""),
    ]
    body = post_batch(client, jobs)
    assert (body["created"], body["existing"], body["failed"]) == (2, 0, 6)
    codes = [item["code"] for item in body["items"]]
    assert codes == [201, 422, 422, 422, 422, 422, 201, 422]
    errors = [item.get("errors") for item in body["items"]]
    assert "name" in errors[1] and "execute_at" in errors[2] and "type" in errors[3]
    assert errors[4] == {"_schema": ["Invalid input type."]}
    assert errors[5] == {"payload": {"url": ["Missing data for required field."]}}
    assert "idempotency_key" in errors[7]
    assert {job.name for job in stored(settings).values()} == {"good-1", "good-2"}


@pytest.mark.parametrize(
    "body, field, code",
    [
        ({"jobs": {"name": "x"}}, "jobs", 422),
        ({"jobs": "x"}, "jobs", 422),
        ({}, "jobs", 422),
        ({"jobs": [], "extra": 1}, "extra", 422),
    ],
)
def test_a_body_without_a_list_of_jobs_is_refused_naming_the_field(
    client: FlaskClient, settings: Settings, body: dict[str, Any], field: str, code: int
) -> None:
    assert field in assert_error(client.post(BATCH, json=body), code)["errors"]["json"]
    assert count_jobs(settings) == 0


def test_more_than_10000_jobs_is_a_413_naming_the_field(client: FlaskClient, settings: Settings) -> None:
    small = {"name": "j", "type": "noop", "delay_seconds": 60}
    body = assert_error(client.post(BATCH, json={"jobs": [small] * 10_001}), 413)
    assert "10,001" in body["errors"]["json"]["jobs"][0]
    assert count_jobs(settings) == 0
    assert post_batch(client, [small] * 10_000)["created"] == 10_000
    assert count_jobs(settings) == 10_000


def test_an_empty_batch_creates_nothing(client: FlaskClient, settings: Settings) -> None:
    assert post_batch(client, []) == {"created": 0, "existing": 0, "failed": 0, "items": []}


def test_the_batch_is_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/api/jobs/batch"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"200", "413", "422"} <= set(operation["responses"])
    schemas = spec["components"]["schemas"]
    jobs = schemas[request["$ref"].rsplit("/", 1)[1]]["properties"]["jobs"]
    assert jobs["maxItems"] == 10_000
    assert "idempotency_key" in schemas[jobs["items"]["$ref"].rsplit("/", 1)[1]]["properties"]


# --- idempotency keys ---------------------------------------------------------------------


def test_idempotency_keys_per_item(client: FlaskClient, settings: Settings) -> None:
    a, b = job_body(name="a", idempotency_key="key-a"), job_body(name="b", idempotency_key="key-b")
    first = post_batch(client, [a, b])
    ids = [item["job"]["id"] for item in first["items"]]
    c = job_body(name="c", idempotency_key="key-c")
    again = post_batch(client, [
        dict(reversed(list(a.items()))),          # the same job, keys in another order: a repeat
        {**b, "name": "not b"},                   # the same key for another job: a conflict
        c, c,                                     # a new key twice in one batch: one job
        {**c, "name": "not c"},                   # ... and then for another job
    ])
    codes = [item["code"] for item in again["items"]]
    assert codes == [200, 409, 201, 200, 409]
    assert (again["created"], again["existing"], again["failed"]) == (1, 2, 2)
    assert again["items"][0]["job"]["id"] == ids[0]
    assert again["items"][3]["job"]["id"] == again["items"][2]["job"]["id"]
    assert ids[1] in again["items"][1]["errors"]["idempotency_key"][0]
    assert "idempotency_key" in again["items"][4]["errors"]
    rows = stored(settings)
    assert sorted(job.idempotency_key for job in rows.values()) == ["key-a", "key-b", "key-c"]
    assert rows[ids[1]].name == "b"


def test_a_batch_key_is_the_same_key_as_a_single_creates_header(client: FlaskClient, settings: Settings) -> None:
    fields = job_body()
    single = client.post("/api/jobs", json=fields, headers={"Idempotency-Key": "shared"})
    assert single.status_code == 201
    item = post_batch(client, [{**fields, "idempotency_key": "shared"}])["items"][0]
    assert (item["code"], item["job"]["id"]) == (200, single.get_json()["id"])
    assert count_jobs(settings) == 1


def test_a_key_stored_by_a_concurrent_request_is_answered_as_a_repeat(
    client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    raced = job_body(idempotency_key="raced")
    first = post_batch(client, [raced])["items"][0]
    # The batch's lookup runs before the other request committed: it sees nothing, its insert
    # hits the unique key, and the batch is tried again.
    real = api.create._by_keys
    calls: list[set[str]] = []

    def late_lookup(session: Any, tenant: str, keys: set[str]) -> dict[str, Any]:
        calls.append(keys)
        return {} if len(calls) == 1 else real(session, tenant, keys)

    monkeypatch.setattr(api.create, "_by_keys", late_lookup)
    body = post_batch(client, [raced, job_body(name="other")])
    assert [item["code"] for item in body["items"]] == [200, 201]
    assert body["items"][0]["job"]["id"] == first["job"]["id"]
    assert len(calls) == 2 and count_jobs(settings) == 2


# --- direct dispatch ----------------------------------------------------------------------


def test_jobs_due_soon_are_dispatched_and_the_rest_left_to_the_scanner(kafka_settings: Settings) -> None:
    settings = replace(kafka_settings, scan_interval_seconds=60.0)
    jobs = [job_body(name=f"soon-{i}", execute_at=..., delay_seconds=3) for i in range(40)]
    jobs += [job_body(name=f"later-{i}", execute_at=in_(3600)) for i in range(10)]
    for client in make_client(settings):
        body = post_batch(client, jobs)
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'chronoq_api_direct_dispatches_total{outcome="published"} 40.0' in metrics
    statuses = [item["job"]["status"] for item in body["items"]]
    assert statuses == ["QUEUED"] * 40 + ["SCHEDULED"] * 10
    rows = stored(settings)
    soon = {item["job"]["id"] for item in body["items"][:40]}
    assert {job_id for job_id, job in rows.items() if job.status == "QUEUED"} == soon
    for job_id in soon:
        assert rows[job_id].dispatch_token == 1 and rows[job_id].lease_until is not None
    messages = [decode_dispatch(record.value) for record in read_to_end(settings.kafka_bootstrap, settings.topic_jobs)]
    assert sorted(str(m.job_id) for m in messages) == sorted(soon)  # each once
    for message in messages:
        assert (message.token, message.attempt) == (1, 1)
        assert message.execute_at == rows[str(message.job_id)].execute_at


def test_jobs_due_soon_are_handed_back_when_the_broker_is_unreachable(settings: Settings) -> None:
    down = replace(settings, kafka_bootstrap="127.0.0.1:1", scan_interval_seconds=60.0)
    jobs = [job_body(name=f"soon-{i}", execute_at=..., delay_seconds=3) for i in range(30)]
    for client in make_client(down):
        body = post_batch(client, jobs)
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'chronoq_api_direct_dispatches_total{outcome="unpublished"} 30.0' in metrics
    assert body["created"] == 30
    assert {item["job"]["status"] for item in body["items"]} == {"SCHEDULED"}
    rows = stored(settings)
    assert len(rows) == 30
    for job in rows.values():
        # Back where the scanner finds it on its next sweep, not waiting for a lease.
        assert (job.status, job.lease_until) == (JobStatus.SCHEDULED.value, None)


class RefusingProducer:
    """A producer that takes every message and then reports none acknowledged (a broker that
    went away after the producer connected)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_all(self, topic: str, messages: list[tuple[bytes, bytes]], timeout: float = 15.0) -> list[bool]:
        self.sent += [key for key, _ in messages]
        return [False] * len(messages)


def test_a_job_cancelled_before_its_hand_back_stays_cancelled(settings: Settings) -> None:
    settings = replace(settings, scan_interval_seconds=60.0)
    jobs = [job_body(name=f"soon-{i}", execute_at=..., delay_seconds=3) for i in range(3)]

    class CancelThenRefuse(RefusingProducer):
        def send_all(self, topic: str, messages: list[tuple[bytes, bytes]], timeout: float = 15.0) -> list[bool]:
            with session_scope(settings) as session:  # a DELETE that wins the race with the hand-back
                first = session.scalars(select(Job).where(Job.name == "soon-0")).one()
                first.status = JobStatus.CANCELLED.value
            return super().send_all(topic, messages, timeout)

    for client in make_client(settings):
        refusing = CancelThenRefuse()
        client.application.extensions["chronoq"].producer = lambda: refusing
        post_batch(client, jobs)
    assert {job.name: job.status for job in stored(settings).values()} == {
        "soon-0": "CANCELLED", "soon-1": "SCHEDULED", "soon-2": "SCHEDULED"}


def test_dispatches_kafka_does_not_acknowledge_are_handed_back(settings: Settings) -> None:
    settings = replace(settings, scan_interval_seconds=60.0)
    jobs = [job_body(name=f"soon-{i}", execute_at=..., delay_seconds=3) for i in range(5)]
    for client in make_client(settings):
        refusing = RefusingProducer()
        client.application.extensions["chronoq"].producer = lambda: refusing
        body = post_batch(client, jobs + [job_body(name="later")])
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'chronoq_api_direct_dispatches_total{outcome="unpublished"} 5.0' in metrics
    assert [item["job"]["status"] for item in body["items"]] == ["SCHEDULED"] * 6
    assert sorted(refusing.sent) == sorted(item["job"]["id"].encode() for item in body["items"][:5])
    for job in stored(settings).values():
        assert (job.status, job.lease_until) == (JobStatus.SCHEDULED.value, None)
