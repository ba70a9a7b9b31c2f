"""No record can stall a partition, on either topic, over the real broker: every class of bad
record is dead-lettered with its reason, the good record behind it (same partition) is
processed, and the group's committed offset moves past all of them."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import text

from common.core import store
from common.core.messages import UpdateMessage, encode_dispatch, encode_update
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.consumer import POISON_TRIES
from common.infra.db import get_engine, session_scope
from executor_service.service import Executor
from result_service.writer import ResultWriter
from tests.helpers import add_job, get_job, read_topic, wait_for

JOIN_TIMEOUT = 60.0


def bad_records(valid: bytes, max_bytes: int) -> dict[str, bytes | None]:
    """One of each class of record that must not stop a consumer, by name."""
    return {
        "truncated": valid[: len(valid) // 2],
        "huge": b'{"v": 1, "pad": "' + b"x" * (max_bytes + 10) + b'"}',
        "deeply nested": b"[" * 100_000 + b"]" * 100_000,
        "nested object": b'{"v": 1, "payload": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        "invalid UTF-8": b'{"v": 1, "job_id": "\xff\xfe\xfd"}',
        "null value": None,
        "not an object": b"[1, 2, 3]",
        "NaN": valid.replace(b'"attempt":1', b'"attempt":NaN'),
        "5000-digit number": valid.replace(b'"attempt":1', b'"attempt":' + b"9" * 5000),
    }


def send_raw(settings: Settings, topic: str, records: list[tuple[bytes, bytes | None]]) -> list[int]:
    """Publish on partition 0, in order, with a client that lets anything through; the records'
    offsets (as the broker gave them: another client may write to the partition meanwhile, as a
    clean-clone run once saw)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=8 * 1024 * 1024)
    try:
        sent = [producer.send(topic, key=key, value=value, partition=0) for key, value in records]
        producer.flush(30)
        return [future.get(timeout=30).offset for future in sent]
    finally:
        producer.close()


def committed_past(settings: Settings, group: str, topic: str, offset: int) -> bool:
    """Whether ``group`` committed partition 0 of ``topic`` beyond ``offset`` (read without joining)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return (consumer.committed(TopicPartition(topic, 0)) or 0) > offset
    finally:
        consumer.close(autocommit=False)


def letters(settings: Settings, source_topic: str, offsets: list[int]) -> dict[int, dict[str, Any]]:
    """The dead letters of records of ``source_topic`` (the module's two services share the
    dead letter topic) by offset, once there is one for each of ``offsets``."""
    def found() -> dict[int, dict[str, Any]] | None:
        read = (json.loads(r.value) for r in read_topic(settings, settings.topic_dlq, timeout=2))
        by_offset = {letter["offset"]: letter for letter in read if letter["source_topic"] == source_topic}
        return by_offset if set(offsets) <= set(by_offset) else None

    return wait_for(found, timeout=60, interval=0.5, what=f"dead letters for offsets {offsets}")


class InThread:
    """A service object's ``run`` in a thread, stopped at the end."""

    def __init__(self, service: Any, stop: threading.Event) -> None:
        self.service, self.stop_event = service, stop
        self.thread = threading.Thread(target=service.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop within 60s"


@pytest.fixture(scope="module")
def services(module_kafka_settings: Settings) -> Iterator[tuple[Executor, ResultWriter]]:
    """An executor and a result writer on this module's topics, each for one test, started
    together so that their group joins overlap (a join costs seconds)."""
    stop = threading.Event()
    executor, writer = Executor(module_kafka_settings, stop), ResultWriter(module_kafka_settings, stop)
    started = [InThread(executor, stop), InThread(writer, stop)]
    try:
        wait_for(executor.ready.is_set, JOIN_TIMEOUT, what="the executor to join its group")
        wait_for(writer.loop.assigned.is_set, JOIN_TIMEOUT, what="the result writer to join its group")
        yield executor, writer
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def kafka_settings(settings: Settings, module_kafka_settings: Settings) -> Settings:
    """This module's topics, on the database emptied for this test."""
    return module_kafka_settings


def test_executor_dead_letters_every_bad_record_and_moves_on(
    kafka_settings: Settings, services: tuple[Executor, ResultWriter], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = kafka_settings
    poison = add_job(settings, due_in=1.0, name="poison")
    good = add_job(settings, due_in=1.0, name="good")
    with session_scope(settings) as session:
        claimed = {m.job_id: m for m in store.claim_ids(session, [poison, good], now=utcnow(), lease=60).messages}
    tries: list[uuid.UUID] = []

    executor = services[0]
    schedule_many = executor.schedule_many

    def schedule_or_throw(messages: list[Any]) -> bool:
        # A valid message that makes the handler throw, every time it is handled.
        if any(message.job_id == poison for message in messages):
            tries.append(poison)
            raise RuntimeError("handler bug triggered by this job")
        return schedule_many(messages)

    monkeypatch.setattr(executor, "schedule_many", schedule_or_throw)

    bad = bad_records(encode_dispatch(claimed[good]), settings.max_message_bytes)
    records = [(str(good).encode(), value) for value in bad.values()]
    records += [(str(poison).encode(), encode_dispatch(claimed[poison])), (str(good).encode(), encode_dispatch(claimed[good]))]
    offsets = send_raw(settings, settings.topic_jobs, records)

    wait_for(lambda: get_job(settings, good).status == "SUCCESS", timeout=60, what="the good job to run")
    names = list(bad) + ["handler throws"]
    by_offset = letters(settings, settings.topic_jobs, offsets[:len(names)])
    by_name = {name: by_offset[offset] for name, offset in zip(names, offsets)}
    assert all(letter["reason"] for letter in by_name.values())
    assert offsets[-1] not in by_offset  # the good record behind them all was run, not dead-lettered
    assert by_name["handler throws"]["reason"].startswith(f"handler failed {POISON_TRIES} times: RuntimeError")
    assert by_name["handler throws"]["job_id"] == str(poison)
    # Tried in its batch once, then alone a bounded number of times; never again after that.
    assert len(tries) == 1 + POISON_TRIES
    wait_for(lambda: committed_past(settings, settings.executor_group, settings.topic_jobs, offsets[-1]),
             timeout=30, what="the executors' group to commit past every record")
    assert executor.consumer.health.dead_lettered == len(bad) + 1
    print("\nexecutor dead letters: " + "; ".join(f"{n}: {letter['reason'][:70]}" for n, letter in by_name.items()))


@pytest.fixture
def refusing_database(kafka_settings: Settings) -> Iterator[None]:
    """The jobs table refuses the executor name 'refused-executor' while the test runs."""
    with get_engine(kafka_settings).begin() as conn:
        conn.execute(text("ALTER TABLE jobs ADD CONSTRAINT test_refused CHECK (executor IS DISTINCT FROM 'refused-executor')"))
    try:
        yield
    finally:
        with get_engine(kafka_settings).begin() as conn:
            conn.execute(text("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS test_refused"))


def test_result_writer_dead_letters_every_bad_record_and_moves_on(
    kafka_settings: Settings, services: tuple[Executor, ResultWriter], refusing_database: None,
) -> None:
    settings = kafka_settings
    job_id = add_job(settings, due_in=0)
    with session_scope(settings) as session:
        (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=60).messages
    now = utcnow()
    running = UpdateMessage(job_id=job_id, token=message.token, status="RUNNING", attempt=1, at=now,
                            executor="e1", started_at=now)
    # A valid message the database refuses (a constraint an operator added, say).
    refused = UpdateMessage(job_id=job_id, token=message.token, status="FAILED", attempt=1, at=now,
                            executor="refused-executor", started_at=now, finished_at=now, error="boom")
    writer = services[1]

    bad = bad_records(encode_update(running), settings.max_message_bytes)
    key = str(job_id).encode()
    records = [(key, value) for value in bad.values()] + [(key, encode_update(refused)), (key, encode_update(running))]
    offsets = send_raw(settings, settings.topic_updates, records)

    wait_for(lambda: get_job(settings, job_id).status == "RUNNING", timeout=60, what="the good update")
    names = list(bad) + ["refused by the database"]
    by_offset = letters(settings, settings.topic_updates, offsets[:len(names)])
    by_name = {name: by_offset[offset] for name, offset in zip(names, offsets)}
    assert all(letter["reason"] for letter in by_name.values())
    assert offsets[-1] not in by_offset  # the good update behind them all was applied
    assert by_name["refused by the database"]["reason"].startswith(f"handler failed {POISON_TRIES} times")
    assert "test_refused" in by_name["refused by the database"]["reason"]
    wait_for(lambda: committed_past(settings, settings.results_group, settings.topic_updates, offsets[-1]),
             timeout=30, what="the result writers' group to commit past every record")
    job = get_job(settings, job_id)
    assert job.status == "RUNNING" and job.error is None  # the refused FAILED changed nothing
    assert writer.dead_lettered == len(bad) + 1
