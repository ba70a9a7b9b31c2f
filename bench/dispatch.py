"""Benchmark: how fast the scanner claims and publishes due jobs, and how fast the result
writer's transaction applies updates, on the local PostgreSQL and a tansu broker.

    .venv/bin/python bench/dispatch.py --jobs 20000 --batch 500

Prints rates and a per-batch latency distribution measured in one run. Needs PostgreSQL on
127.0.0.1:5432 (trust auth); it creates a database and drops it afterwards."""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa

from common.core import store
from common.launch.broker import LocalBroker
from common.infra import clock
from common.infra.config import load_settings
from common.infra.db import dispose_engines, get_engine, session_scope
from common.infra.kafka import ensure_topics
from common.core.messages import UpdateMessage
from common.core.migrate import upgrade
from common.core.models import Job
from scheduler_service.scanner import Scanner

ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    name = f"chronoq_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    broker = LocalBroker().start()
    try:
        settings = load_settings(
            {}, database_url=ADMIN.rsplit("/", 1)[0] + f"/{name}", kafka_bootstrap=broker.bootstrap,
            scan_batch_size=args.batch, topic_partitions=6,
        )
        upgrade(settings)
        ensure_topics(settings)
        now = clock.utcnow()
        started = time.perf_counter()
        with get_engine(settings).begin() as conn:
            rows = [dict(id=uuid.uuid4(), name=f"b{i}", type="noop", payload={}, meta={}, status="SCHEDULED",
                         execute_at=now + timedelta(milliseconds=i), priority=0, max_retries=3,
                         timeout_seconds=30.0, attempts=0, dispatch_token=0, created_at=now, updated_at=now)
                    for i in range(args.jobs)]
            for i in range(0, len(rows), 5000):
                conn.execute(sa.insert(Job), rows[i:i + 5000])
        print(f"inserted {args.jobs} jobs in {time.perf_counter() - started:.2f}s")

        scanner = Scanner(settings, threading.Event())
        started = time.perf_counter()
        # One scan claims and publishes batch after batch until nothing before the horizon is left.
        total = scanner.scan(clock.utcnow() + timedelta(seconds=args.jobs / 1000 + 60)).published
        elapsed = time.perf_counter() - started
        print(f"scanner: claimed and published {total} jobs in {elapsed:.2f}s = {total / elapsed:,.0f} jobs/s "
              f"(batch size {args.batch})")

        with session_scope(settings) as session:
            ids = list(session.scalars(sa.select(Job.id).limit(min(args.jobs, 5000))))
        messages = []
        for job_id in ids:
            at = clock.utcnow()
            messages.append(UpdateMessage(job_id=job_id, token=1, status="RUNNING", attempt=1, at=at, executor="b", started_at=at))
            messages.append(UpdateMessage(job_id=job_id, token=1, status="SUCCESS", attempt=1, at=at, executor="b",
                                          started_at=at, finished_at=at, output={"ok": True}))
        per_batch: list[float] = []
        started = time.perf_counter()
        for i in range(0, len(messages), 500):
            t0 = time.perf_counter()
            with session_scope(settings) as session:
                store.apply_updates(session, messages[i:i + 500], lease=30)
            per_batch.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - started
        print(f"result writer: applied {len(messages)} updates in {elapsed:.2f}s = {len(messages) / elapsed:,.0f} updates/s; "
              f"per 500-update transaction p50 {statistics.median(per_batch):.0f} ms, "
              f"p99 {pct(per_batch, 0.99):.0f} ms, max {max(per_batch):.0f} ms")
        scanner.producer.close()
    finally:
        dispose_engines()
        broker.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
