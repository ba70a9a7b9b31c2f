"""Benchmark: how many updates per second the result writer applies.

    .venv/bin/python -m bench.results                      # 50,000 updates, batches of 100, 500, 2000
    .venv/bin/python -m bench.results --jobs 20000 --batches 500

For each batch size, in a new PostgreSQL database (migrated, dropped at the end): ``--jobs``
jobs are created RUNNING (with the RUNNING history row their start claim wrote), one terminal
update per job (SUCCESS, with output) is published to the updates topic on a tansu broker, and
a :class:`ResultWriter` is started on that backlog. The clock starts once the writer has joined
its consumer group and stops when every job is SUCCESS in the database. The batch size is the
consumer's ``max_records`` (500 in the service); "mean batch" is what the polls really gave.

Needs PostgreSQL on 127.0.0.1:5432 with trust auth (``BENCH_POSTGRES_URL`` to change)."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from bench.benchlib import bench_environment, fresh_topics, print_table
from common.core.messages import UpdateMessage, encode_update
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import get_engine
from common.infra.kafka import Producer
from result_service.writer import ResultWriter

log = logging.getLogger("bench.results")

# Jobs as a start claim leaves them: RUNNING attempt 1 of dispatch 1, with its history row.
_RUNNING_JOBS = sa.text("""
INSERT INTO jobs (id, name, type, payload, metadata, status, execute_at, priority, max_retries,
                  timeout_seconds, attempts, dispatch_token, lease_until, created_at, updated_at,
                  started_at, executor)
SELECT gen_random_uuid(), 'running-' || g, 'http', json_build_object('url', 'https://example.com/hook/' || g),
       '{}'::json, 'RUNNING', :started, 0, 3, 30.0, 1, 1, :started + interval '1 hour', :started, :started,
       :started, 'bench-executor'
FROM generate_series(1, :n) AS g
""")
_RUNNING_ATTEMPTS = sa.text("""
INSERT INTO job_attempts (job_id, attempt, dispatch_token, status, started_at, executor)
SELECT id, 1, 1, 'RUNNING', started_at, executor FROM jobs
""")


def running_jobs(settings: Settings, n: int) -> list[Any]:
    """A fresh table of ``n`` RUNNING jobs; returns their ids and start times."""
    started = utcnow() - timedelta(seconds=1)
    with get_engine(settings).begin() as conn:
        conn.execute(sa.text("TRUNCATE job_attempts, jobs"))
        conn.execute(_RUNNING_JOBS, dict(started=started, n=n))
        conn.execute(_RUNNING_ATTEMPTS)
        rows = conn.execute(sa.text("SELECT id, started_at FROM jobs")).all()
    with get_engine(settings).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE jobs"))
        conn.execute(sa.text("ANALYZE job_attempts"))
    return rows


def publish_outcomes(settings: Settings, rows: list[Any]) -> float:
    """One SUCCESS update per job on the updates topic; returns the seconds it took."""
    now = utcnow()
    messages = [
        UpdateMessage(job_id=job_id, token=1, status="SUCCESS", attempt=1, at=now, executor="bench-executor",
                      started_at=started, finished_at=now, output={"status": 200, "body": "ok"})
        for job_id, started in rows
    ]
    producer = Producer(settings, client_id="bench-executor")
    began = time.perf_counter()
    acked = producer.send_all(settings.topic_updates, [(m.key, encode_update(m)) for m in messages], timeout=60)
    elapsed = time.perf_counter() - began
    producer.close()
    if not all(acked):
        raise SystemExit(f"only {sum(acked)} of {len(acked)} updates were acknowledged")
    return elapsed


def count(settings: Settings, sql: str) -> int:
    with get_engine(settings).connect() as conn:
        return conn.scalar(sa.text(sql))


def measure(settings: Settings, jobs: int, batch: int, timeout: float) -> list[Any]:
    """Apply ``jobs`` updates with a writer taking ``batch`` records per poll; the table row."""
    settings = fresh_topics(settings, f"b{batch}")
    rows = running_jobs(settings, jobs)
    publish_seconds = publish_outcomes(settings, rows)
    stop = threading.Event()
    writer = ResultWriter(settings, stop)
    writer.loop.max_records = batch
    batches: list[int] = []
    handle = writer.loop.handle

    def counted(updates: list[UpdateMessage]) -> bool:
        batches.append(len(updates))
        return handle(updates)

    writer.loop.handle = counted
    thread = threading.Thread(target=writer.run, name="result-writer")
    thread.start()
    try:
        if not writer.loop.assigned.wait(120):
            raise SystemExit("the result writer did not join its group within 120 s")
        began = time.perf_counter()
        deadline = began + timeout
        done = 0
        while done < jobs and time.perf_counter() < deadline:
            time.sleep(0.25)
            done = count(settings, "SELECT count(*) FROM jobs WHERE status = 'SUCCESS'")
        elapsed = time.perf_counter() - began
    finally:
        stop.set()
        thread.join(60)
    history = count(settings, "SELECT count(*) FROM job_attempts WHERE status = 'SUCCESS'")
    if done != jobs or history != jobs:
        log.error("after %.0fs: %d of %d jobs SUCCESS, %d history rows SUCCESS", elapsed, done, jobs, history)
    mean_batch = sum(batches) / len(batches) if batches else 0
    log.info("batch %d: %d updates applied in %.2fs (%.0f/s) in %d batches", batch, done, elapsed, done / elapsed,
             len(batches))
    return [batch, f"{mean_batch:,.0f}", f"{jobs:,}", f"{jobs / publish_seconds:,.0f}", f"{elapsed:.2f}",
            f"{done / elapsed:,.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs (and updates) per measurement")
    parser.add_argument("--batches", default="100,500,2000", help="consumer max_records values, comma separated")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on one measurement after this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    rows = []
    with bench_environment(topic_partitions=6) as settings:
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(measure(settings, args.jobs, batch, args.timeout))
    print_table(["max records", "mean batch", "updates", "published/s", "apply s", "updates/s"], rows)


if __name__ == "__main__":
    main()
