"""Benchmark: one scanner pass over a full window in a big jobs table.

    .venv/bin/python -m bench.scanner                      # 1 M, then 10 M rows
    .venv/bin/python -m bench.scanner --sizes 200000 --due 20000

In a new PostgreSQL database (migrated, dropped at the end) the jobs table is filled with
finished and far-future jobs up to each size, server-side (INSERT ... SELECT FROM
generate_series); then, for each shape of window, ``--due`` jobs due before the scanner's
horizon are added (spread over the window, or all in the same second) and one
``Scanner.scan`` claims them and publishes them to a tansu broker. The table shows the time
spent claiming (inside ``store.claim_due``) and publishing (``Producer.send_all``: send to
acknowledgement), each added up over the scanner's claimer threads (they overlap, so the two
can add up to more than the pass), the whole pass, the process's CPU time in it (all
threads), and jobs/s. The target: a 50,000-job window in at most 2 s at 10 million rows, its
cost set by the window, not by the table.

Needs PostgreSQL on 127.0.0.1:5432 with trust auth (``BENCH_POSTGRES_URL`` to change) and a
few GB of disk for 10 M rows; filling them takes minutes (progress is printed)."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import sqlalchemy as sa

from bench.benchlib import bench_environment, distinct_keys, fresh_topics, print_table
from common.core import store
from common.core.windows import dispatch_horizon
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import get_engine
from common.infra.kafka import Producer
from scheduler_service.scanner import Scanner

log = logging.getLogger("bench.scanner")

FILL_CHUNK = 500_000

# Filler rows: four in five finished in the past (SUCCESS, FAILED, CANCELLED), one in five
# SCHEDULED a day or more ahead, so the due index holds far more than one window.
_FILL = sa.text("""
INSERT INTO jobs (id, name, type, payload, metadata, status, execute_at, priority, max_retries,
                  timeout_seconds, attempts, dispatch_token, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'filler-' || g, 'http',
       json_build_object('url', 'https://example.com/hook/' || g), '{}'::json,
       CASE g % 10 WHEN 0 THEN 'SCHEDULED' WHEN 1 THEN 'SCHEDULED' WHEN 2 THEN 'FAILED'
                   WHEN 3 THEN 'CANCELLED' ELSE 'SUCCESS' END,
       CASE WHEN g % 10 < 2 THEN :now + interval '1 day' + g * interval '10 ms'
            ELSE :now - interval '60 days' + g * interval '100 ms' END,
       0, 3, 30.0,
       CASE WHEN g % 10 < 2 THEN 0 ELSE 1 END,
       CASE WHEN g % 10 < 2 THEN 0 ELSE 1 END,
       :now - interval '60 days', :now - interval '60 days',
       CASE WHEN g % 10 < 2 THEN NULL ELSE :now - interval '30 days' END
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint) - 1) AS g
""")

# The window: SCHEDULED jobs spread evenly between ``first`` and ``last``.
_DUE = sa.text("""
INSERT INTO jobs (id, name, type, payload, metadata, status, execute_at, priority, max_retries,
                  timeout_seconds, attempts, dispatch_token, created_at, updated_at)
SELECT gen_random_uuid(), 'due-' || g, 'http',
       json_build_object('url', 'https://example.com/hook/' || g, 'json', json_build_object('n', g)),
       '{}'::json, 'SCHEDULED',
       CAST(:first AS timestamptz) + (CAST(:last AS timestamptz) - CAST(:first AS timestamptz)) * g / :n,
       0, 3, 30.0, 0, 0, :now, :now
FROM generate_series(0, CAST(:n AS bigint) - 1) AS g
""")


class Stopwatch:
    """Adds up the time spent in calls of the functions it wraps, from any thread."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - started

        return timed


class TimedProducer(Producer):
    """The scanner's producer, adding up the time spent publishing (send to acknowledgement)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, client_id="chronoq-scanner")
        self.stopwatch = Stopwatch()
        self.send_all = self.stopwatch.wrap(super().send_all)  # type: ignore[method-assign]


def table_rows(settings: Settings) -> int:
    with get_engine(settings).connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM jobs"))


def fill(settings: Settings, start: int, stop: int, now: datetime) -> None:
    """Add filler rows ``start`` .. ``stop - 1``, one transaction per chunk, with progress."""
    began = time.perf_counter()
    for low in range(start, stop, FILL_CHUNK):
        high = min(stop, low + FILL_CHUNK)
        with get_engine(settings).begin() as conn:
            conn.execute(_FILL, dict(now=now, start=low, stop=high))
        elapsed = time.perf_counter() - began
        log.info("filled %s of %s rows (%s rows/s)", f"{high:,}", f"{stop:,}", f"{(high - start) / elapsed:,.0f}")


#: How the window's jobs are due: spread evenly over it, or all in one busy second.
SHAPES = ("spread", "same second")


def add_window(settings: Settings, due: int, now: datetime, shape: str) -> None:
    """``due`` jobs due before the scanner's horizon (spread from a second from now to the
    horizon, or all 30 s from now), then ANALYZE (as autovacuum would after a bulk load) so
    the planner knows the table's size."""
    first = now + timedelta(seconds=1)
    last = dispatch_horizon(now, settings.scan_interval_seconds) - timedelta(seconds=1)
    if shape == "same second":
        first = last = now + timedelta(seconds=30)
    with get_engine(settings).begin() as conn:
        conn.execute(_DUE, dict(first=first, last=last, n=due, now=now))
    with get_engine(settings).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE jobs"))


def retire_window(settings: Settings) -> None:
    """The last window's jobs become finished filler, so the next measurement starts clean."""
    with get_engine(settings).begin() as conn:
        conn.execute(sa.text(
            "UPDATE jobs SET status = 'SUCCESS', lease_until = NULL, finished_at = now() "
            "WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELLED') AND name LIKE 'due-%'"
        ))


def measure(settings: Settings, due: int, shape: str) -> list[Any]:
    """One scan of a ``due``-job window of ``shape``; returns the table row."""
    others = table_rows(settings)
    settings = fresh_topics(settings, f"{others}")
    producer = TimedProducer(settings)
    # A running scanner's producer is connected long before a window opens.
    producer.send_and_wait(settings.topic_dlq, b"warm-up", b"{}")
    producer.stopwatch.seconds = 0.0
    add_window(settings, due, utcnow(), shape)
    scanner = Scanner(settings, threading.Event(), producer=producer)
    claiming = Stopwatch()
    # The scanner calls store.claim_due through the module: timed there, put back afterwards.
    claim_due, store.claim_due = store.claim_due, claiming.wrap(store.claim_due)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        result = scanner.scan(utcnow())
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        store.claim_due = claim_due
    producer.close()
    on_topic = distinct_keys(settings, settings.topic_jobs, expect=due)
    if result.published != due or on_topic != due:
        log.error("expected %d dispatches; published %d, %d on the topic", due, result.published, on_topic)
    seconds = [claiming.seconds, producer.stopwatch.seconds, total, cpu]
    return [f"{others:,}", f"{due:,}", shape, settings.scan_batch_size, *(f"{s:.2f}" for s in seconds),
            f"{result.published / total:,.0f}", f"{on_topic:,}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000", help="table sizes, comma separated, ascending")
    parser.add_argument("--due", type=int, default=50_000, help="jobs in the window")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"how the window is due: {' or '.join(SHAPES)}")
    parser.add_argument("--batch", type=int, default=None, help="CHRONOQ_SCAN_BATCH_SIZE (default: the setting's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    extra = {"scan_batch_size": args.batch} if args.batch else {}
    rows = []
    with bench_environment(topic_partitions=6, scan_interval_seconds=60.0, **extra) as settings:
        next_row = 0
        fill_at = utcnow()
        for size in sizes:
            # ``size`` other rows when the window is added (earlier windows, finished, included).
            missing = max(0, size - table_rows(settings))
            fill(settings, next_row, next_row + missing, fill_at)
            next_row += missing
            for shape in args.shapes.split(","):
                rows.append(measure(settings, args.due, shape))
                retire_window(settings)
            print_table(["other rows", "window", "due", "batch", "claim s", "publish s", "total s", "cpu s", "jobs/s",
                         "jobs on topic"], rows)


if __name__ == "__main__":
    main()
