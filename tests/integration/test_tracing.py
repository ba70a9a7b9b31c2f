"""Tracing in the API and the dispatch, in-process with an in-memory span exporter, on the real
PostgreSQL and broker: a create stores the context of its span (a child of the request's
``traceparent``) on the job, and the dispatch record carries a ``traceparent`` header of a
"dispatch" span that is a child of it (the API's direct dispatch, and the scanner's from the
row); the record's JSON stays as it was."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from kafka import KafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api import create_app
from common.core.models import Job
from common.infra import tracing
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from scheduler_service.scanner import Scanner

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}


def _client(settings: Settings) -> Iterator[tuple[FlaskClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    traced = replace(settings, tracing=True)
    tracing.setup(traced, "api", exporter=exporter)
    app = create_app(traced)
    try:
        yield app.test_client(), exporter
    finally:
        app.extensions["chronoq"].close()
        tracing.shutdown()


@pytest.fixture
def traced(settings: Settings) -> Iterator[tuple[FlaskClient, InMemorySpanExporter]]:
    yield from _client(settings)


@pytest.fixture
def traced_kafka(kafka_settings: Settings) -> Iterator[tuple[FlaskClient, InMemorySpanExporter]]:
    yield from _client(kafka_settings)


def _body(seconds: float = 3600, **changes: Any) -> dict[str, Any]:
    return {"name": "traced", "type": "noop", "execute_at": (utcnow() + timedelta(seconds=seconds)).isoformat(),
            **changes}


def _stored(settings: Settings, job_id: str) -> dict[str, str] | None:
    with session_scope(settings) as session:
        return session.get(Job, uuid.UUID(job_id)).trace_context


def _ids(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _only(exporter: InMemorySpanExporter, name: str) -> Any:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def _records(settings: Settings, job_ids: set[str], timeout: float = 10.0) -> dict[str, Any]:
    """The records of the jobs topic keyed by these job ids, read from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    found: dict[str, Any] = {}
    try:
        partitions = [TopicPartition(settings.topic_jobs, p)
                      for p in sorted(consumer.partitions_for_topic(settings.topic_jobs) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while set(found) != job_ids:
            assert time.monotonic() < deadline, f"records of {job_ids - set(found)} not found"
            for batch in consumer.poll(timeout_ms=200).values():
                found.update({r.key.decode(): r for r in batch if r.key.decode() in job_ids})
    finally:
        consumer.close()
    return found


def test_a_create_stores_the_context_of_its_span_a_child_of_the_incoming_traceparent(
    traced: tuple[FlaskClient, InMemorySpanExporter], settings: Settings,
) -> None:
    client, exporter = traced
    response = client.post("/api/jobs", json=_body(), headers=INCOMING)
    assert response.status_code == 201, response.get_json()
    job_id = response.get_json()["id"]
    span = _only(exporter, "create job")
    trace_id, span_id = _ids(span)
    assert trace_id == TRACE_ID and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["chronoq.job_id"] == job_id
    assert _stored(settings, job_id) == {"traceparent": f"00-{TRACE_ID}-{span_id}-01", "tracestate": "vendor=1"}
    assert "trace_context" not in response.get_json()


def test_a_batch_stores_the_context_of_its_span_on_every_job(
    traced: tuple[FlaskClient, InMemorySpanExporter], settings: Settings,
) -> None:
    client, exporter = traced
    response = client.post("/api/jobs/batch", json={"jobs": [_body(), _body(name="second")]}, headers=INCOMING)
    assert response.status_code == 200, response.get_json()
    ids = [item["job"]["id"] for item in response.get_json()["items"]]
    span = _only(exporter, "create jobs")
    assert span.attributes["chronoq.jobs"] == 2
    trace_id, span_id = _ids(span)
    assert trace_id == TRACE_ID
    assert [_stored(settings, i)["traceparent"] for i in ids] == [f"00-{TRACE_ID}-{span_id}-01"] * 2


def test_a_create_without_traceparent_starts_a_trace(
    traced: tuple[FlaskClient, InMemorySpanExporter], settings: Settings,
) -> None:
    client, exporter = traced
    job_id = client.post("/api/jobs", json=_body()).get_json()["id"]
    span = _only(exporter, "create job")
    assert span.parent is None
    trace_id, span_id = _ids(span)
    stored = _stored(settings, job_id)
    assert list(stored) == ["traceparent"] and stored["traceparent"].startswith(f"00-{trace_id}-{span_id}-")


def test_off_stores_null_and_sends_no_header(kafka_settings: Settings) -> None:
    assert not tracing.active()
    app = create_app(kafka_settings)
    try:
        client = app.test_client()
        due_now = client.post("/api/jobs", json=_body(0), headers=INCOMING).get_json()["id"]
        later = client.post("/api/jobs", json=_body(), headers=INCOMING).get_json()["id"]
    finally:
        app.extensions["chronoq"].close()
    with session_scope(kafka_settings) as session:  # SQL NULL, not a JSON null
        nulls = session.execute(sa.text("SELECT count(*) FROM jobs WHERE trace_context IS NULL AND id IN (:a, :b)"),
                                {"a": due_now, "b": later}).scalar()
    assert nulls == 2
    assert not _records(kafka_settings, {due_now})[due_now].headers


def test_dispatches_carry_a_traceparent_header_of_a_dispatch_span(
    traced_kafka: tuple[FlaskClient, InMemorySpanExporter], kafka_settings: Settings,
) -> None:
    client, exporter = traced_kafka
    # One an hour out (the scanner dispatches it, from the row, in a scan an hour ahead), then
    # one due now (the API dispatches it itself).
    later = client.post("/api/jobs", json=_body(3600, type="sleep", payload={"seconds": 0}),
                        headers=INCOMING).get_json()["id"]
    assert Scanner(kafka_settings, threading.Event()).scan(utcnow() + timedelta(hours=1)).published == 1
    direct = client.post("/api/jobs", json=_body(0), headers=INCOMING).get_json()["id"]
    records = _records(kafka_settings, {direct, later})

    creates = {s.attributes["chronoq.job_id"]: s for s in exporter.get_finished_spans() if s.name == "create job"}
    dispatches = {s.attributes["chronoq.job_id"]: s for s in exporter.get_finished_spans()
                  if s.name.startswith("dispatch ")}
    assert dispatches[direct].name == "dispatch noop" and dispatches[later].name == "dispatch sleep"
    for job_id in (direct, later):
        dispatch, record = dispatches[job_id], records[job_id]
        trace_id, span_id = _ids(dispatch)
        assert trace_id == TRACE_ID
        assert dispatch.parent.span_id == creates[job_id].get_span_context().span_id
        assert dispatch.attributes["chronoq.attempt"] == 1
        headers = dict(record.headers)
        assert headers["traceparent"] == f"00-{TRACE_ID}-{span_id}-01".encode()
        assert headers["tracestate"] == b"vendor=1"
        assert json.loads(record.value)["token"] == 1  # one dispatch each
        assert not {"trace", "traceparent", "trace_context"} & set(json.loads(record.value))
