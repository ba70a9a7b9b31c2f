"""The result writer on the real PostgreSQL and tansu: applies, replays, dead-letters."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from common.core import store
from common.infra.clock import utcnow
from common.infra.db import session_scope
from common.infra.kafka import Producer
from common.core.messages import UpdateMessage, encode_update
from common.core.models import JobAttempt
from result_service.writer import ResultWriter
from tests.helpers import add_job, get_job, read_topic, wait_for


JOIN_TIMEOUT = 60.0  # a tansu group join takes ~5 s, 15 s and more on a loaded machine


@pytest.fixture
def kafka_settings(settings, module_kafka_settings):
    """This module's topics, on the database emptied for this test: one result writer serves
    every test (a group join costs seconds), each test keeps to jobs of its own."""
    return module_kafka_settings


@pytest.fixture(scope="module")
def writer(module_kafka_settings):
    stop = threading.Event()
    result_writer = ResultWriter(module_kafka_settings, stop)
    thread = threading.Thread(target=result_writer.run)
    thread.start()
    try:
        wait_for(result_writer.loop.assigned.is_set, timeout=JOIN_TIMEOUT, what="the result writer to join its group")
        yield result_writer
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def queued_job(settings, **kw):
    job_id = add_job(settings, due_in=0, **kw)
    with session_scope(settings) as session:
        message = store.claim_ids(session, [job_id], now=utcnow(), lease=10).messages[0]
    return job_id, message.token


def updates_for(job_id, token):
    now = utcnow()
    return [
        UpdateMessage(job_id=job_id, token=token, status="RUNNING", attempt=1, at=now, executor="e1", started_at=now),
        UpdateMessage(job_id=job_id, token=token, status="RETRYING", attempt=1, at=now, executor="e1",
                      started_at=now, finished_at=now, error="boom", next_attempt_at=now + timedelta(seconds=1)),
        UpdateMessage(job_id=job_id, token=token, status="RUNNING", attempt=2, at=now, executor="e2", started_at=now),
        UpdateMessage(job_id=job_id, token=token, status="SUCCESS", attempt=2, at=now, executor="e2",
                      started_at=now, finished_at=now, output={"status": 200}),
    ]


def publish(settings, messages):
    producer = Producer(settings)
    try:
        producer.send_all(settings.topic_updates, [(m.key, encode_update(m)) for m in messages])
    finally:
        producer.close()


def history(settings, job_id):
    with session_scope(settings) as session:
        rows = session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.attempt).all()
        return [(r.attempt, r.status, r.executor, r.error) for r in rows]


def test_applies_updates_and_history(kafka_settings, writer):
    job_id, token = queued_job(kafka_settings)
    publish(kafka_settings, updates_for(job_id, token))
    wait_for(lambda: get_job(kafka_settings, job_id).status == "SUCCESS", timeout=30, what="SUCCESS")
    job = get_job(kafka_settings, job_id)
    assert job.attempts == 2 and job.output == {"status": 200} and job.finished_at is not None
    assert history(kafka_settings, job_id) == [(1, "FAILED", "e1", "boom"), (2, "SUCCESS", "e2", None)]


def test_replay_and_out_of_order_change_nothing(kafka_settings, writer):
    job_id, token = queued_job(kafka_settings)
    messages = updates_for(job_id, token)
    publish(kafka_settings, messages)
    wait_for(lambda: get_job(kafka_settings, job_id).status == "SUCCESS", timeout=30, what="SUCCESS")
    before = (get_job(kafka_settings, job_id).updated_at, history(kafka_settings, job_id))
    publish(kafka_settings, list(reversed(messages)) + messages)
    marker, marker_token = queued_job(kafka_settings)  # a later message proves the replay was consumed
    publish(kafka_settings, updates_for(marker, marker_token)[:1])
    wait_for(lambda: get_job(kafka_settings, marker).status == "RUNNING", timeout=30, what="marker")
    job = get_job(kafka_settings, job_id)
    assert job.status == "SUCCESS" and (job.updated_at, history(kafka_settings, job_id)) == before


def test_malformed_updates_go_to_the_dead_letter_topic_and_the_partition_flows(kafka_settings, writer):
    job_id, token = queued_job(kafka_settings)
    producer = Producer(kafka_settings)
    key = str(job_id).encode()  # same key: same partition as the good message after them
    bad = [b"{truncated", json.dumps({"v": 99}).encode(), b"x" * (kafka_settings.max_message_bytes + 1)]
    try:
        for value in bad:
            producer.send_and_wait(kafka_settings.topic_updates, key, value)
    finally:
        producer.close()
    publish(kafka_settings, updates_for(job_id, token)[:1])
    wait_for(lambda: get_job(kafka_settings, job_id).status == "RUNNING", timeout=30, what="good update")

    def own_letters():
        # The dead letter topic is the module's: this test's letters are those named for its
        # job (each bad record's key).
        records = read_topic(kafka_settings, kafka_settings.topic_dlq, timeout=5)
        return [letter for letter in map(json.loads, (r.value for r in records)) if letter["job_id"] == str(job_id)]

    letters = wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(own_letters()), timeout=30,
                       what="three dead letters")
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 3
    assert any("not valid JSON" in r for r in reasons)
    assert any("version" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    assert all(letter["source_topic"] == kafka_settings.topic_updates for letter in letters)
