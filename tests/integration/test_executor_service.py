"""The executor against real PostgreSQL and a real (tansu) broker: jobs are inserted and
dispatched directly, the Executor runs in a thread, and its updates are read from the topic."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer

from common.core import store
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.kafka import Producer
from common.core.messages import DispatchMessage, UpdateMessage, decode_update, encode_dispatch
from common.core.models import JobAttempt, Job
from common.launch.broker import LocalBroker
from executor_service.service import Executor
from tests.conftest import with_own_topics

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 60.0  # a tansu group join takes ~5 s, 15 s and more on a loaded machine


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def soon(seconds: float) -> datetime:
    """A time ``seconds`` from now, on a whole millisecond (what the messages carry)."""
    at = utcnow() + timedelta(seconds=seconds)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def create_dispatch(settings: Settings, *, type: str = "noop", payload: dict[str, Any] | None = None,
                    execute_at: datetime, max_retries: int = 3, timeout: float = 10.0,
                    misfire_grace: float | None = None) -> DispatchMessage:
    """Insert a SCHEDULED job and claim it (QUEUED, dispatch token 1), as the scanner would."""
    job_id = uuid.uuid4()
    with session_scope(settings) as session:
        session.add(Job(
            id=job_id, name=f"test-{type}", type=type, payload=payload or {}, execute_at=execute_at,
            max_retries=max_retries, timeout_seconds=timeout, misfire_grace_seconds=misfire_grace,
        ))
    with session_scope(settings) as session:
        (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=settings.lease_seconds).messages
    assert message.token == 1 and message.attempt == 1
    return message


def job_row(settings: Settings, job_id: uuid.UUID) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


class Topic:
    """Everything on one topic, read from the beginning without a group."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        self.values: list[bytes] = []

    def read(self) -> list[bytes]:
        for batch in self.consumer.poll(timeout_ms=100).values():
            self.values.extend(record.value for record in batch)
        return self.values

    def close(self) -> None:
        self.consumer.close()


class Updates(Topic):
    def of(self, job_id: uuid.UUID) -> list[UpdateMessage]:
        updates = [decode_update(value) for value in self.read()]
        return [u for u in updates if u.job_id == job_id]

    def wait_status(self, job_id: uuid.UUID, status: str, timeout: float = 20.0) -> list[UpdateMessage]:
        return wait_for(
            lambda: (lambda us: us if any(u.status == status for u in us) else None)(self.of(job_id)),
            timeout, f"a {status} update of job {job_id}",
        )


class Running:
    """An Executor running in a thread, stopped at the end of the test (or module)."""

    def __init__(self, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.executor = Executor(settings, self.stop_event)
        self.baseline = self.executor.counters.snapshot()
        self.thread = threading.Thread(target=self.executor.run, name="executor-under-test", daemon=True)
        self.thread.start()
        wait_for(self.executor.ready.is_set, JOIN_TIMEOUT, "the executor to join its group")

    def count(self, name: str) -> int:
        """Counter ``name`` since the start, or since :meth:`mark`."""
        return getattr(self.executor.counters.snapshot(), name) - getattr(self.baseline, name)

    def mark(self) -> "Running":
        """Count from now on: an executor shared by tests ran the jobs of those before."""
        self.baseline = self.executor.counters.snapshot()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the executor did not stop within 30s"


@pytest.fixture
def kafka_settings(settings: Settings, module_kafka_settings: Settings) -> Settings:
    """This module's topics, on the database emptied for this test: one executor serves the
    tests that do not stop it (a group join costs seconds), each keeps to jobs of its own."""
    return module_kafka_settings


@pytest.fixture(scope="module")
def shared_executor(module_kafka_settings: Settings) -> Iterator[Running]:
    running = Running(module_kafka_settings)
    yield running
    running.stop()


@pytest.fixture
def executor(kafka_settings: Settings, shared_executor: Running) -> Running:
    return shared_executor.mark()


@pytest.fixture
def updates(kafka_settings: Settings) -> Iterator[Updates]:
    reader = Updates(kafka_settings, kafka_settings.topic_updates)
    yield reader
    reader.close()


@pytest.fixture
def publish(kafka_settings: Settings) -> Iterator[Callable[[DispatchMessage], None]]:
    producer = Producer(kafka_settings)

    def send(message: DispatchMessage) -> None:
        producer.send_and_wait(kafka_settings.topic_jobs, message.key, encode_dispatch(message))

    yield send
    producer.close()


def test_noop_fires_on_time_not_early(kafka_settings: Settings, executor: Running, updates: Updates,
                                      publish: Callable[[DispatchMessage], None]) -> None:
    message = create_dispatch(kafka_settings, execute_at=soon(1.5))
    publish(message)
    seen = updates.wait_status(message.job_id, "SUCCESS")
    assert [u.status for u in seen] == ["RUNNING", "SUCCESS"]
    running, success = seen
    assert running.started_at is not None and running.started_at >= message.execute_at
    lateness = (running.started_at - message.execute_at).total_seconds()
    log.info("noop job fired %.1f ms after execute_at", lateness * 1000)
    print(f"fire lateness: {lateness * 1000:.1f} ms")  # reported; the bound is the e2e tests' (a scan window)
    assert success.output == {"ok": True} and success.attempt == 1 and success.token == 1
    assert success.finished_at is not None and success.finished_at >= success.started_at
    assert success.executor == kafka_settings.resolved_executor_id
    job = job_row(kafka_settings, message.job_id)
    # The executor writes the outcome through to the database (and publishes it): no result
    # writer runs in this test, yet the job and its history are complete.
    assert job.status == "SUCCESS" and job.attempts == 1 and job.output == {"ok": True}
    assert job.started_at is not None and job.started_at >= job.execute_at
    with session_scope(kafka_settings) as session:
        rows = session.query(JobAttempt).filter_by(job_id=message.job_id).all()
        assert [(r.attempt, r.status, r.executor) for r in rows] == [(1, "SUCCESS", success.executor)]


def test_failing_job_retries_three_times_then_fails(kafka_settings: Settings, executor: Running, updates: Updates,
                                                    publish: Callable[[DispatchMessage], None]) -> None:
    message = create_dispatch(kafka_settings, type="fail", payload={"message": "nope"},
                              execute_at=soon(0.5), max_retries=3)
    publish(message)
    seen = updates.wait_status(message.job_id, "FAILED", timeout=30)
    assert [(u.status, u.attempt) for u in seen] == [
        ("RUNNING", 1), ("RETRYING", 1), ("RUNNING", 2), ("RETRYING", 2),
        ("RUNNING", 3), ("RETRYING", 3), ("RUNNING", 4), ("FAILED", 4),
    ]
    retrying = [u for u in seen if u.status == "RETRYING"]
    running = [u for u in seen if u.status == "RUNNING"]
    for before, after in zip(retrying, running[1:]):
        assert before.error == "JobFailed: nope"
        assert before.next_attempt_at is not None and after.started_at is not None
        assert after.started_at >= before.next_attempt_at  # the backoff is respected
    # Backoff 0.2s doubling (test settings, no jitter): 0.2, 0.4, 0.8.
    gaps = [(b.next_attempt_at - b.finished_at).total_seconds() for b in retrying]  # type: ignore[operator]
    late = [(a.started_at - b.next_attempt_at).total_seconds() * 1000 for b, a in zip(retrying, running[1:])]  # type: ignore[operator]
    print(f"retry fire lateness: {', '.join(f'{ms:.1f}' for ms in late)} ms")
    assert gaps == pytest.approx([0.2, 0.4, 0.8], abs=0.002)
    assert seen[-1].error == "JobFailed: nope"
    dlq = Topic(kafka_settings, kafka_settings.topic_dlq)
    try:  # the module's dead letter topic: this test's letter is its job's
        (letter,) = wait_for(
            lambda: [letter for letter in map(json.loads, dlq.read()) if letter["job_id"] == str(message.job_id)],
            30, "the dead letter")
    finally:
        dlq.close()
    assert letter["reason"] == "retries exhausted"
    assert letter["extra"]["attempt"] == 4
    assert job_row(kafka_settings, message.job_id).attempts == 4


def test_duplicate_delivery_starts_once(kafka_settings: Settings, executor: Running, updates: Updates,
                                        publish: Callable[[DispatchMessage], None]) -> None:
    message = create_dispatch(kafka_settings, execute_at=soon(2.0))
    publish(message)
    publish(message)  # delivered twice before it fires: the scheduler already has it
    wait_for(lambda: executor.count("scheduled") == 1, 10,
             "the dispatch to be scheduled")
    updates.wait_status(message.job_id, "SUCCESS")
    publish(message)  # delivered again after it ran: it fires, but the claim refuses it
    wait_for(lambda: executor.count("skipped") == 1, 10, "the late duplicate to be refused")
    assert [u.status for u in updates.of(message.job_id)] == ["RUNNING", "SUCCESS"]
    assert executor.count("fired") == 2 and executor.count("scheduled") == 2
    assert job_row(kafka_settings, message.job_id).attempts == 1


def test_cancelled_after_queueing_never_starts(kafka_settings: Settings, executor: Running, updates: Updates,
                                               publish: Callable[[DispatchMessage], None]) -> None:
    message = create_dispatch(kafka_settings, execute_at=soon(2.0))
    publish(message)
    wait_for(lambda: executor.count("scheduled") == 1, 10, "the dispatch to be scheduled")
    with session_scope(kafka_settings) as session:
        assert store.cancel(session, message.job_id, now=utcnow()).cancelled
    wait_for(lambda: executor.count("skipped") == 1, 10, "the fire to be refused")
    assert executor.count("fired") == 1
    assert updates.of(message.job_id) == []
    job = job_row(kafka_settings, message.job_id)
    assert job.status == "CANCELLED" and job.attempts == 0 and job.started_at is None


def test_malformed_message_is_dead_lettered_and_the_partition_moves_on(
    kafka_settings: Settings, executor: Running, updates: Updates,
) -> None:
    message = create_dispatch(kafka_settings, execute_at=soon(0.5))
    junk_key = f"junk-{uuid.uuid4().hex[:8]}"  # the topics are the module's: a key of this test's
    raw = KafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    try:
        # All on one partition, the bad ones first: the good one is processed only if they do
        # not block it.
        raw.send(kafka_settings.topic_jobs, key=junk_key.encode(), value=b"not json {", partition=0)
        raw.send(kafka_settings.topic_jobs, key=message.key, value=b'{"v": 1, "job_id": "x"}', partition=0)
        raw.send(kafka_settings.topic_jobs, key=message.key, value=encode_dispatch(message), partition=0)
        raw.flush(10)
    finally:
        raw.close()
    updates.wait_status(message.job_id, "SUCCESS")
    dlq = Topic(kafka_settings, kafka_settings.topic_dlq)
    try:
        ours = {junk_key, str(message.job_id)}
        letters = wait_for(
            lambda: (lambda ls: ls if len(ls) >= 2 else None)(
                [letter for letter in map(json.loads, dlq.read()) if letter["job_id"] in ours]),
            30, "two dead letters")
    finally:
        dlq.close()
    junk, invalid = sorted(letters, key=lambda letter: letter["offset"])
    assert junk["reason"].startswith("not valid JSON") and junk["original"] == "not json {"
    assert junk["job_id"] == junk_key and junk["source_topic"] == kafka_settings.topic_jobs and junk["partition"] == 0
    assert invalid["reason"].startswith("invalid fields") and "job_id" in invalid["reason"]
    assert invalid["job_id"] == str(message.job_id)


def test_permanent_failures_and_misfires_do_not_retry(kafka_settings: Settings, executor: Running, updates: Updates,
                                                      publish: Callable[[DispatchMessage], None]) -> None:
    unknown = create_dispatch(kafka_settings, type="nope", execute_at=soon(0.2))
    invalid = create_dispatch(kafka_settings, type="sleep", payload={"seconds": "long"}, execute_at=soon(0.2))
    missed = create_dispatch(kafka_settings, execute_at=soon(-10), misfire_grace=2.0)
    for message in (unknown, invalid, missed):
        publish(message)
    for message in (unknown, invalid):
        seen = updates.wait_status(message.job_id, "FAILED")
        assert [(u.status, u.attempt) for u in seen] == [("RUNNING", 1), ("FAILED", 1)]
    assert "unknown job type 'nope'" in updates.of(unknown.job_id)[-1].error  # type: ignore[operator]
    assert "invalid payload" in updates.of(invalid.job_id)[-1].error  # type: ignore[operator]
    (failed,) = updates.wait_status(missed.job_id, "FAILED")
    assert failed.started_at is None and failed.error is not None
    assert failed.error.startswith("missed: 1") and failed.error.endswith("late, grace 2s")
    job = job_row(kafka_settings, missed.job_id)
    assert job.status == "FAILED" and job.attempts == 0 and job.error == failed.error


class TestOwnExecutor:
    """Tests that stop their executor: each starts its own, on topics of its own."""

    @pytest.fixture
    def kafka_settings(self, settings: Settings, broker: LocalBroker) -> Settings:
        return with_own_topics(settings, broker)

    def test_stop_hands_back_jobs_not_yet_fired(self, kafka_settings: Settings, updates: Updates,
                                                publish: Callable[[DispatchMessage], None]) -> None:
        running = Running(kafka_settings)
        try:
            later = create_dispatch(kafka_settings, execute_at=soon(3600))
            busy = create_dispatch(kafka_settings, type="sleep", payload={"seconds": 1.0}, execute_at=soon(0.2))
            publish(later)
            publish(busy)
            updates.wait_status(busy.job_id, "RUNNING")
            assert job_row(kafka_settings, later.job_id).status == "QUEUED"
        finally:
            running.stop()
        job = job_row(kafka_settings, later.job_id)
        assert job.status == "SCHEDULED" and job.lease_until is None and job.attempts == 0
        assert running.executor.scheduler.get_jobs() == []
        # The running job was let finish before the executor returned.
        assert [u.status for u in updates.wait_status(busy.job_id, "SUCCESS", timeout=30)] == ["RUNNING", "SUCCESS"]
        assert updates.of(later.job_id) == []
