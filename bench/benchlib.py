"""What the benchmarks share: a fresh, migrated PostgreSQL database and a tansu broker that
exist for one run, and a plain-text table printer."""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Sequence

import sqlalchemy as sa

from common.core.migrate import upgrade
from common.infra.config import Settings, load_settings
from common.infra.db import dispose_engines
from common.infra.kafka import ensure_topics
from common.launch.broker import LocalBroker

#: The server's maintenance database; the benchmark's own database is created beside it.
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextmanager
def bench_environment(**settings: Any) -> Iterator[Settings]:
    """Settings on a new database (migrated like the tests' one) and a new tansu broker, both
    gone when the block ends, whatever happens in it."""
    name = f"chronoq_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    broker = None
    try:
        broker = LocalBroker().start()
        result = load_settings(
            {}, database_url=ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", kafka_bootstrap=broker.bootstrap, **settings
        )
        upgrade(result)
        ensure_topics(result)
        yield result
    finally:
        dispose_engines()
        if broker is not None:
            broker.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fresh_topics(settings: Settings, label: str) -> Settings:
    """``settings`` with topics of their own (created), so one measurement's records are
    counted apart from another's."""
    suffix = f"{label}-{uuid.uuid4().hex[:6]}"
    result = replace(
        settings, topic_jobs=f"jobs-{suffix}", topic_updates=f"updates-{suffix}", topic_dlq=f"dlq-{suffix}",
        group_prefix=f"bench-{suffix}",
    )
    ensure_topics(result)
    return result


def distinct_keys(settings: Settings, topic: str, expect: int, timeout: float = 60.0) -> int:
    """How many distinct keys ``topic`` holds, read from the start until ``expect`` are seen or
    nothing more comes. Records are read, not counted from end offsets: tansu's end offsets can
    fall short of the records it holds."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        keys: set[bytes] = set()
        deadline = time.monotonic() + timeout
        while len(keys) < expect and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=1000)
            if not polled:
                break
            keys.update(record.key for batch in polled.values() for record in batch)
        return len(keys)
    finally:
        consumer.close()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A right-aligned plain-text table."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if n == 0:
            print(line)
    print(line)
