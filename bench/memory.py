"""Benchmark: executor memory — the resident memory (RSS) of one executor process holding
0, 100,000 and 500,000 attempts that wait for their time.

    .venv/bin/python -m bench.memory                          # 0, 100,000 and 500,000
    .venv/bin/python -m bench.memory --attempts 100000

It starts a fresh database and broker and one executor only (no scanner, API or result
writer), and publishes ``DispatchMessage``s (common/core/messages.py) straight to the jobs topic:
``noop`` jobs with an empty payload (``--payload-bytes`` pads it), due ``--due-in`` s (a day)
ahead, so the executor takes each into its in-memory schedule and touches neither the database
nor anything else until they are due. After each step it waits until the executor's consumer
group has committed every offset of the topic (the executor commits a batch once it is
scheduled) and its RSS has stopped moving for ``--settle`` s, then reads the RSS from /proc
(the process and any children). It prints RSS, the growth over the empty executor and that
growth per waiting attempt — the target is at most 1 KB. The executor is stopped with
SIGKILL: a SIGTERM would make it hand each waiting attempt back to the database, one by one.
Needs PostgreSQL on 127.0.0.1:5432 (trust auth) for the (untouched) database."""

from __future__ import annotations

import argparse
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.benchlib import print_table
from bench.system import BenchSystem, Service, exit_on_sigterm, rss_bytes
from common.core.messages import DispatchMessage, encode_dispatch
from common.infra.config import Settings

TARGET = 1024  # bytes per waiting attempt


def publish(settings: Settings, count: int, due: datetime, pad: int) -> None:
    """``count`` dispatches of distinct noop jobs, keyed by job id like the scanner's; prints progress."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    payload = {"pad": "x" * pad} if pad else {}
    started = time.monotonic()
    try:
        for n in range(1, count + 1):
            message = DispatchMessage(
                job_id=uuid.uuid4(), token=1, name=f"m{n}", type="noop", payload=payload, execute_at=due,
                attempt=1, max_retries=0, timeout_seconds=30.0,
            )
            producer.send(settings.topic_jobs, key=message.key, value=encode_dispatch(message))
            if n % 50000 == 0:
                print(f"    published {n:,}/{count:,} ({time.monotonic() - started:.0f}s)", flush=True)
        producer.flush(120)
    finally:
        producer.close(10)


class Progress:
    """How far the executor's consumer group is through the jobs topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Never subscribes, so it never joins the group: it only reads the group's committed offsets.
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.executor_group, enable_auto_commit=False,
        )
        partitions = self.consumer.partitions_for_topic(settings.topic_jobs) or set()
        self.partitions = [TopicPartition(settings.topic_jobs, p) for p in sorted(partitions)]

    def committed(self) -> int:
        return sum(self.consumer.committed(tp) or 0 for tp in self.partitions)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def waiting_in_log(executor: Service) -> int | None:
    """The executor's own count of waiting attempts from its last status line, if it logs one."""
    found = re.findall(r"(\d+) waiting", executor.tail(20000))
    return int(found[-1]) if found else None


def settle(executor: Service, progress: Progress | None, target: int, quiet: float, timeout: float) -> int:
    """Wait until the group committed ``target`` offsets and the RSS held still (within 0.5 %)
    for ``quiet`` s; returns that RSS."""
    deadline = time.monotonic() + timeout
    samples: list[tuple[float, int]] = []  # (time, RSS) since the group caught up
    shown = 0.0
    done = 0
    while time.monotonic() < deadline:
        if executor.process is None or executor.process.poll() is not None:
            raise RuntimeError(f"the executor exited:\n{executor.tail()}")
        now = time.monotonic()
        rss = rss_bytes(executor.pid)
        done = progress.committed() if progress is not None else target
        if done < target:
            samples = []
        else:
            samples.append((now, rss))
            window = [r for t, r in samples if now - t <= quiet]
            if now - samples[0][0] >= quiet and max(window) <= min(window) * 1.005:
                return rss
        if now - shown >= 5:
            print(f"    consumed {done:,}/{target:,}, RSS {rss / 2**20:,.1f} MiB", flush=True)
            shown = now
        time.sleep(1.0)
    raise RuntimeError(f"the executor did not settle within {timeout:.0f}s (consumed {done:,}/{target:,})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", default="100000,500000", help="waiting attempts to measure at, ascending")
    parser.add_argument("--due-in", type=float, default=86400.0, help="seconds ahead the attempts are due")
    parser.add_argument("--payload-bytes", type=int, default=0, help="pad each payload with this many bytes")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the RSS must hold still")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one step may take to settle")
    parser.add_argument("--keep-logs", action="store_true", help="keep the executor's log")
    args = parser.parse_args()
    exit_on_sigterm()
    steps = [int(n) for n in args.attempts.split(",") if n]

    rows: list[list[str]] = []
    with BenchSystem(executors=1, services=("executor",), keep_logs=args.keep_logs) as system:
        executor = system.executor_services()[0]
        settings = system.require()
        progress = Progress(settings)
        ok = False
        try:
            base = settle(executor, None, 0, args.settle, args.timeout)
            rows.append(["0", f"{base / 2**20:,.1f}", "-", "-", "-"])
            print(f"  empty executor: RSS {base / 2**20:,.1f} MiB", flush=True)
            due = datetime.now(timezone.utc) + timedelta(seconds=args.due_in)
            published = 0
            for target in steps:
                publish(settings, target - published, due, args.payload_bytes)
                published = target
                rss = settle(executor, progress, target, args.settle, args.timeout)
                growth = rss - base
                logged = waiting_in_log(executor)
                rows.append([
                    f"{target:,}", f"{rss / 2**20:,.1f}", f"{growth / 2**20:,.1f}", f"{growth / target:,.0f}",
                    f"{logged:,}" if logged is not None else "-",
                ])
                print(f"  {target:,} waiting: RSS {rss / 2**20:,.1f} MiB, {growth / target:,.0f} bytes each", flush=True)
            ok = True
        finally:
            progress.close()
            system.stop(failed=not ok, kill_executors=True)
            print(f"\nExecutor memory: waiting noop attempts (payload {args.payload_bytes} bytes of padding), "
                  f"target ≤ {TARGET} bytes each")
            print_table(["waiting", "RSS MiB", "growth MiB", "bytes/attempt", "executor says waiting"], rows)


if __name__ == "__main__":
    main()
