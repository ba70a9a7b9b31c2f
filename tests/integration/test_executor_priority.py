"""Priority through the real executor (in-process), real PostgreSQL and the tansu broker: more
attempts due at one instant than the executor can start at once start highest priority first.

The jobs are of types registered here as user handlers: ``block``, a plain function (it takes
one of ``CHRONOQ_EXECUTOR_WORKERS`` threads, so at most that many run at once) and ``mark``, a
coroutine (the event loop starts them one after another). Each notes when it started. Their ids
are chosen so that, ordered by id, they would start lowest priority first."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import pytest

from common.core import store
from common.core.messages import DispatchMessage, encode_dispatch
from common.core.models import Job
from common.infra.clock import utcnow
from common.infra.config import Settings, load_settings
from common.infra.kafka import ensure_topics
from common.launch.broker import LocalBroker
from tests.conftest import TEST_SETTINGS
from common.infra.db import session_scope
from common.infra.kafka import Producer
from tests.integration.test_executor_service import Running, job_row, wait_for

#: The thread counts of the executors this module's tests run on.
WORKERS = (1, 3)

#: How long a ``block`` handler holds its thread: long beside a thread's start-up, so the
#: handlers that start together (one per free thread) are apart from the next ones.
HOLD = 0.3

_lock = threading.Lock()
#: run id -> (job number, wall-clock start) in the order the handlers started.
_starts: dict[str, list[tuple[int, datetime]]] = {}
#: run id -> [running now, most at once]
_busy: dict[str, list[int]] = {}


def _started(payload: dict[str, Any]) -> None:
    with _lock:
        _starts.setdefault(payload["run"], []).append((payload["n"], utcnow()))


def block(payload: dict[str, Any], context: Any) -> dict[str, Any]:
    """A plain-function handler: notes its start, holds its thread for ``seconds``."""
    _started(payload)
    with _lock:
        busy = _busy.setdefault(payload["run"], [0, 0])
        busy[0] += 1
        busy[1] = max(busy[1], busy[0])
    time.sleep(payload["seconds"])
    with _lock:
        busy[0] -= 1
    return {"n": payload["n"]}


async def mark(payload: dict[str, Any], context: Any) -> dict[str, Any]:
    """A coroutine handler: notes its start (on the executor's loop)."""
    _started(payload)
    await asyncio.sleep(0)
    return {"n": payload["n"]}


def at_ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def adversarial_ids(priorities: list[int]) -> list[uuid.UUID]:
    """Job ids whose own order is the priorities' lowest first."""
    ids = sorted(uuid.uuid4() for _ in priorities)
    ranks = sorted(range(len(priorities)), key=lambda i: priorities[i])
    out = [uuid.UUID(int=0)] * len(priorities)
    for rank, i in enumerate(ranks):
        out[i] = ids[rank]
    return out


def dispatch(settings: Settings, jobs: list[dict[str, Any]]) -> list[DispatchMessage]:
    """Insert the jobs SCHEDULED and claim them (QUEUED), as the scanner does; their dispatches."""
    with session_scope(settings) as session:
        for job in jobs:
            session.add(Job(name=f"prio-{job['payload']['n']}", max_retries=0, timeout_seconds=30.0, **job))
    ids = [job["id"] for job in jobs]
    with session_scope(settings) as session:
        messages = store.claim_ids(session, ids, now=utcnow(), lease=settings.lease_seconds).messages
    by_id = {m.job_id: m for m in messages}
    assert sorted(by_id) == sorted(ids)
    out = [by_id[i] for i in ids]
    # The scanner's dispatch carries the job's priority: without it nothing below can hold.
    assert [m.priority for m in out] == [job["priority"] for job in jobs]
    return out


def publish(settings: Settings, messages: list[DispatchMessage]) -> None:
    producer = Producer(settings)
    try:
        for message in messages:
            producer.send_and_wait(settings.topic_jobs, message.key, encode_dispatch(message))
    finally:
        producer.close()


@pytest.fixture(scope="module")
def start_executor(pg_url: str, broker: LocalBroker) -> Iterator[Callable[[int], tuple[Running, Settings]]]:
    """An executor with ``workers`` threads, on topics of its own, shared by this module's tests
    (a group join costs seconds: those of every thread count are started together, so that
    their joins overlap); each test's jobs and runs are its own."""
    started: dict[int, tuple[Running, Settings]] = {}

    def make(workers: int) -> tuple[Running, Settings]:
        suffix = uuid.uuid4().hex[:8]
        settings = load_settings(
            {}, database_url=pg_url, **{**TEST_SETTINGS, "executor_workers": workers},
            kafka_bootstrap=broker.bootstrap, topic_jobs=f"jobs-{suffix}", topic_updates=f"updates-{suffix}",
            topic_dlq=f"dlq-{suffix}", group_prefix=f"test-{suffix}",
            handlers=(f"block={__name__}:block", f"mark={__name__}:mark"),
        )
        ensure_topics(settings)
        return Running(settings), settings

    def start(workers: int) -> tuple[Running, Settings]:
        assert workers in WORKERS, f"add {workers} to WORKERS"
        if not started:
            with ThreadPoolExecutor(len(WORKERS)) as pool:
                made = {count: pool.submit(make, count) for count in WORKERS}
            started.update((count, future.result()) for count, future in made.items() if future.exception() is None)
            for future in made.values():
                future.result()  # the first failure to start, if any (those started are stopped below)
        return started[workers]

    yield start
    for running, _ in started.values():
        running.stop()


def run_and_wait(settings: Settings, running: Running, run: str, jobs: list[dict[str, Any]]) -> list[int]:
    """Dispatch ``jobs`` through the broker, check the executor held them all before the first
    was due, wait until each succeeded; the job numbers in the order their handlers started."""
    first_due = min(job["execute_at"] for job in jobs)
    held = running.count("scheduled")  # the executor may have run other tests' jobs before
    messages = dispatch(settings, jobs)
    publish(settings, sorted(messages, key=lambda m: m.priority))  # lowest priority arrives first
    wait_for(lambda: running.count("scheduled") >= held + len(jobs), 30, "the executor to hold every dispatch")
    assert utcnow() < first_due, "the dispatches reached the executor too late to test their order"
    # The executor writes each end through to the database (no result writer runs here).
    wait_for(lambda: all(job_row(settings, m.job_id).status == "SUCCESS" for m in messages), 60,
             "every job to succeed")
    assert [job_row(settings, m.job_id).attempts for m in messages] == [1] * len(messages)
    starts = _starts.pop(run)
    assert sorted(n for n, _ in starts) == sorted(job["payload"]["n"] for job in jobs)  # each started once
    for n, started in starts:
        assert started >= jobs[n]["execute_at"], f"job {n} started before its time"
    return [n for n, _ in starts]


@pytest.mark.parametrize("workers", [1, 3])
def test_blocking_jobs_due_together_start_highest_priority_first(
    start_executor: Callable[[int], tuple[Running, Settings]], workers: int,
) -> None:
    running, settings = start_executor(workers)
    run = uuid.uuid4().hex
    priorities = [0, 7, -3, 2**31 - 1, 1, -(2**31 - 1), 42]
    due = at_ms(utcnow() + timedelta(seconds=4))
    jobs = [
        dict(id=job_id, type="block", priority=p, execute_at=due, payload={"run": run, "n": n, "seconds": HOLD})
        for n, (p, job_id) in enumerate(zip(priorities, adversarial_ids(priorities)))
    ]
    order = run_and_wait(settings, running, run, jobs)
    # ``workers`` handlers start together, then one as each ends: compare the groups, since the
    # threads of one group start in no particular order.
    by_priority = sorted(range(len(jobs)), key=lambda n: -priorities[n])
    groups = range(0, len(jobs), workers)
    assert [set(order[i:i + workers]) for i in groups] == [set(by_priority[i:i + workers]) for i in groups]
    assert _busy.pop(run)[1] == workers  # the executor ran as many at once as it could, no more


def test_coroutine_jobs_due_together_start_highest_priority_first(
    start_executor: Callable[[int], tuple[Running, Settings]],
) -> None:
    running, settings = start_executor(1)
    run = uuid.uuid4().hex
    priorities = [3, -1, 0, 12, 5, -40, 1, 2, 100, -2]
    due = at_ms(utcnow() + timedelta(seconds=4))
    jobs = [
        dict(id=job_id, type="mark", priority=p, execute_at=due, payload={"run": run, "n": n})
        for n, (p, job_id) in enumerate(zip(priorities, adversarial_ids(priorities)))
    ]
    order = run_and_wait(settings, running, run, jobs)
    assert [priorities[n] for n in order] == sorted(priorities, reverse=True)


def test_a_lower_priority_job_due_earlier_is_not_overtaken(
    start_executor: Callable[[int], tuple[Running, Settings]],
) -> None:
    """One thread, held past the due times of three more jobs: the one due first goes next
    although its priority is the lowest; the two due together after it, by priority."""
    running, settings = start_executor(1)
    run = uuid.uuid4().hex
    t = at_ms(utcnow() + timedelta(seconds=4))
    plan = [  # (due, priority, seconds held)
        (t, 0, 1.0),                                 # 0: holds the only thread
        (t + timedelta(milliseconds=200), -5, HOLD),  # 1: due next, lowest priority
        (t + timedelta(milliseconds=400), 1, HOLD),   # 2: due later, together with 3
        (t + timedelta(milliseconds=400), 5, HOLD),   # 3
    ]
    ids = adversarial_ids([p for _, p, _ in plan])
    jobs = [
        dict(id=ids[n], type="block", priority=p, execute_at=due, payload={"run": run, "n": n, "seconds": held})
        for n, (due, p, held) in enumerate(plan)
    ]
    order = run_and_wait(settings, running, run, jobs)
    expected = sorted(range(len(plan)), key=lambda n: (plan[n][0], -plan[n][1]))
    assert order == expected
    assert order[1] == 1  # the lowest priority, due earlier, before both due later
    assert _busy.pop(run)[1] == 1
