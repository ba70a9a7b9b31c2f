"""Celery 5 on Redis, the baseline of the fire-precision benchmark: the same work as chronoq's
``http`` jobs, done with ETA tasks — ``post.apply_async(eta=...)`` of a task that POSTs the
same JSON body to the same receiver, through a pooled ``requests`` session (one per worker
process, keep-alive).

The worker is ``celery -A bench.celery_side worker --pool prefork --concurrency N`` started as a
subprocess on a queue of its own (``chronoq-bench-<random>``), so a run never meets another
run's tasks; the queue is deleted afterwards. Redis: ``BENCH_CELERY_BROKER`` (default
``redis://127.0.0.1:6379/14``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import requests
from celery import Celery
from requests.adapters import HTTPAdapter

from common.launch.process import terminate

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/14")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "chronoq-bench")

app = Celery("chronoq_bench", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,  # chronoq's figure does not include writing a result either
    task_serializer="json",
    accept_content=["json"],
    enable_utc=True,
    timezone="UTC",
    broker_connection_retry_on_startup=True,
    # ETA tasks wait in the worker unacknowledged; Redis redelivers them after this (the default,
    # an hour, far beyond a benchmark's lead time).
    broker_transport_options={"visibility_timeout": 3600},
    worker_hijack_root_logger=False,
)

_session: requests.Session | None = None


def session() -> requests.Session:
    """This process's keep-alive session (made after the fork, one per pool process)."""
    global _session
    if _session is None:
        _session = requests.Session()
        _session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=4))
    return _session


@app.task(name="chronoq_bench.post")
def post(url: str, body: dict[str, Any]) -> None:
    """The job: one POST, as chronoq's ``http`` type does; a failure is not retried."""
    session().post(url, json=body, timeout=30).raise_for_status()


def submit(url: str, bodies: Sequence[dict[str, Any]], etas: Sequence[datetime], queue: str) -> None:
    """``apply_async(eta=...)`` for each body, over one producer connection; prints progress."""
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for n, (body, eta) in enumerate(zip(bodies, etas), 1):
            post.apply_async((url, body), eta=eta, queue=queue, producer=producer)
            if n % 20000 == 0:
                print(f"    submitted {n:,} Celery tasks ({time.monotonic() - started:.0f}s)", flush=True)


def send_now(url: str, bodies: Sequence[dict[str, Any]], queue: str) -> None:
    """Tasks without an ETA (the warm-up)."""
    for body in bodies:
        post.apply_async((url, body), queue=queue)


class CeleryWorker:
    """A prefork worker on a queue of its own, as a child process stopped by its PID."""

    def __init__(self, concurrency: int, log_path: Path) -> None:
        self.concurrency = concurrency
        self.queue = f"chronoq-bench-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None  # type: ignore[type-arg]

    def start(self) -> "CeleryWorker":
        env = {**os.environ, "BENCH_CELERY_BROKER": BROKER, "BENCH_CELERY_QUEUE": self.queue, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.celery_side", "worker",
                 "--pool", "prefork", "--concurrency", str(self.concurrency), "--queues", self.queue,
                 "--hostname", f"{self.queue}@%h", "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"the Celery worker exited with code {self.process.returncode}:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown, then remove every trace of the queue from Redis."""
        process, self.process = self.process, None
        terminate(process, timeout)
        forget_queue(self.queue)


def forget_queue(queue: str) -> int:
    """Delete ``queue``, its bindings and its messages still held unacknowledged (an ETA task a
    stopped worker held is restored to its queue only after the visibility timeout, an hour
    later); returns how many of those there were."""
    dropped = 0
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        for tag, raw in client.hscan_iter("unacked"):
            try:
                _message, exchange, routing_key = json.loads(raw)
            except ValueError:
                continue
            if queue in (exchange, routing_key):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
                dropped += 1
    return dropped
