"""Small helpers for tests: make jobs, wait on conditions, read a topic."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select

from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.core.models import Job


def add_job(settings: Settings, *, due_in: float = 0.0, execute_at: datetime | None = None, **kw: Any) -> uuid.UUID:
    """Insert a job directly (SCHEDULED unless ``status`` says otherwise) and return its id."""
    fields = dict(name="test", type="noop", payload={}, max_retries=3, timeout_seconds=30.0)
    fields.update(kw)
    with session_scope(settings) as session:
        job = Job(execute_at=execute_at or utcnow() + timedelta(seconds=due_in), **fields)
        session.add(job)
        session.flush()
        return job.id


def count_jobs(settings: Settings) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Job))


def get_job(settings: Settings, job_id: uuid.UUID) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def read_topic(settings: Settings, topic: str, *, expect: int | None = None, timeout: float = 10.0) -> list[Any]:
    """Every record on ``topic`` from the start (no consumer group), waiting for ``expect``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if expect is not None and len(records) >= expect:
                break
            if expect is None and records and not consumer.poll(timeout_ms=300):
                break
        return records
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets at the call (read without a group): a
    slow fetch delays the answer but loses nothing."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{topic} was not read to its end within {timeout}s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
