"""Priority in the executor, piece by piece and without services: the scheduler ids that order
attempts due at the same instant, the timer firing them in that order, the claim queue, and
the handler threads' waiting line. tests/integration/test_executor_priority.py checks the whole
executor over PostgreSQL and the broker."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from apscheduler.triggers.date import DateTrigger
from hypothesis import given
from hypothesis import strategies as st

from common.core.messages import DispatchMessage
from common.infra.config import load_settings
from executor_service import claims as claims_module
from executor_service.claims import Claims
from executor_service.deadline import Threads
from executor_service.service import _apscheduler_id
from executor_service.timer import Timer, job_id

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def message(priority: int, execute_at: datetime, job: uuid.UUID | None = None) -> DispatchMessage:
    return DispatchMessage(
        job_id=job or uuid.uuid4(), token=1, name="t", type="noop", payload={}, execute_at=execute_at,
        attempt=1, max_retries=0, timeout_seconds=5.0, priority=priority,
    )


def adversarial(priorities: list[int]) -> list[uuid.UUID]:
    """Job ids for ``priorities`` whose own order is the priorities' lowest first: ordered by id
    alone (what the scheduler did before), attempts would fire in reverse priority order."""
    ids = sorted(uuid.uuid4() for _ in priorities)
    ranks = sorted(range(len(priorities)), key=lambda i: priorities[i])
    out: list[uuid.UUID] = [uuid.UUID(int=0)] * len(priorities)
    for rank, i in enumerate(ranks):
        out[i] = ids[rank]
    return out


# -- scheduler ids ---------------------------------------------------------------------------

@given(st.lists(st.tuples(INT32, st.uuids()), min_size=2, max_size=40))
def test_job_ids_sort_by_priority_highest_first_then_by_name(attempts: list[tuple[int, uuid.UUID]]) -> None:
    names = {job_id(f"{u}:1:1", p): (p, f"{u}:1:1") for p, u in attempts}
    by_id = [names[i] for i in sorted(names)]
    assert by_id == sorted(names.values(), key=lambda pn: (-pn[0], pn[1]))


def test_default_priority_leaves_the_id_as_it_was() -> None:
    # Every waiting attempt keeps its id in memory: the default costs nothing extra.
    name = f"{uuid.uuid4()}:3:2"
    assert job_id(name, 0) == name
    assert job_id(name, 1) != name and job_id(name, -1) != name


def test_priorities_beyond_32_bits_are_clamped_not_misordered() -> None:
    name = f"{uuid.uuid4()}:1:1"
    assert job_id(name, 2**40) == job_id(name, 2**31 - 1)
    assert job_id(name, -(2**40)) == job_id(name, -(2**31))
    assert sorted([job_id(name, -(2**40)), job_id(name, 0), job_id(name, 2**40)]) == [
        job_id(name, 2**40), name, job_id(name, -(2**40)),
    ]


# -- the timer -------------------------------------------------------------------------------

_fired: list[int] = []


async def _record(priority: int) -> None:
    _fired.append(priority)


def test_timer_fires_attempts_due_at_one_instant_by_priority() -> None:
    """The real APScheduler store and pass: attempts due together start highest priority first;
    one due earlier starts before them whatever its priority."""
    priorities = [-(2**31), -7, -1, 0, 0, 1, 2, 50, 2**31 - 1]
    random.shuffle(priorities)
    ids = adversarial(priorities)
    _fired.clear()

    async def main() -> None:
        timer = Timer(timezone=timezone.utc, event_loop=asyncio.get_running_loop())
        timer.start()
        try:
            at = datetime.now(timezone.utc) + timedelta(seconds=0.3)
            early = message(-100, at - timedelta(milliseconds=50))
            for m in [message(p, at, j) for p, j in zip(priorities, ids)] + [early]:
                timer.add_job(_record, DateTrigger(run_date=m.execute_at, timezone=timezone.utc),
                              args=(m.priority,), id=_apscheduler_id(m), misfire_grace_time=None)
            for _ in range(200):
                if len(_fired) == len(priorities) + 1:
                    break
                await asyncio.sleep(0.02)
        finally:
            timer.shutdown(wait=False)

    asyncio.run(main())
    assert _fired == [-100] + sorted(priorities, reverse=True)


# -- the claim queue -------------------------------------------------------------------------

def make_claims() -> Claims[Any]:
    return Claims(load_settings({}), "test", None, None, lambda m, row: None)  # type: ignore[arg-type]


def test_claim_queue_takes_attempts_by_due_time_then_priority() -> None:
    claims = make_claims()
    first = datetime.now(timezone.utc) + timedelta(milliseconds=100)
    second = first + timedelta(milliseconds=50)
    waiting = [message(p, at) for at in (first, second) for p in (-3, 0, 0, 4, 9, 2**31 - 1)]
    random.shuffle(waiting)
    for m in waiting:
        claims.add(m)
    taken = claims._take_due()
    assert [(m.execute_at, m.priority) for m in taken] == sorted(
        ((m.execute_at, m.priority) for m in waiting), key=lambda ap: (ap[0], -ap[1]),
    )


def test_a_full_claim_batch_leaves_the_lowest_priorities_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claims_module, "BATCH_MAX", 3)
    claims = make_claims()
    at = datetime.now(timezone.utc) + timedelta(milliseconds=100)
    priorities = [5, -1, 0, 8, 3, 1, 2]
    for p in priorities:
        claims.add(message(p, at))
    batches = [[m.priority for m in claims._take_due()] for _ in range(3)]
    assert batches == [[8, 5, 3], [2, 1, 0], [-1]]


# -- the handler threads' waiting line -------------------------------------------------------

class Gate:
    """Plain-function handlers that note their start and wait for ``release``."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        self.release = threading.Event()

    def call(self, tag: Any, hold: bool = True) -> Any:
        def run() -> Any:
            with self._lock:
                self.started.append(tag)
                self.running += 1
                self.most = max(self.most, self.running)
            if hold:
                self.release.wait(10)
            with self._lock:
                self.running -= 1
            return tag
        return run


async def _until(condition: Any, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


def test_waiting_handlers_get_a_thread_earliest_due_first_then_highest_priority() -> None:
    now = datetime.now(timezone.utc)
    later = now + timedelta(seconds=1)
    # (due, priority) in the order they come to wait; the runner's order is (due, -priority).
    arrivals = [(later, 9), (now, -5), (later, 1), (now, 3), (later, 9), (now, 3), (now, 0)]
    gate = Gate()

    async def main() -> None:
        threads = Threads(1)
        blocker = asyncio.ensure_future(threads.run(gate.call("blocker"), "blocker"))
        await _until(lambda: gate.started == ["blocker"], "the blocker to start")
        tasks = []
        for n, (due, priority) in enumerate(arrivals):
            tasks.append(asyncio.ensure_future(threads.run(gate.call(n, hold=False), f"t{n}", order=(due, -priority))))
            await _until(lambda: threads.waiting == len(tasks), "the handler to queue")
        gate.release.set()
        assert await asyncio.gather(*tasks) == list(range(len(arrivals)))
        await blocker

    asyncio.run(main())
    expected = sorted(range(len(arrivals)), key=lambda n: (arrivals[n][0], -arrivals[n][1], n))
    assert gate.started == ["blocker", *expected]
    # Every handler due at the earlier instant went first, the one of priority -5 included.
    assert set(gate.started[1:5]) == {n for n, (due, _) in enumerate(arrivals) if due == now}
    assert gate.most == 1


def test_a_handler_that_gave_up_waiting_neither_runs_nor_keeps_a_thread() -> None:
    gate = Gate()

    async def main() -> None:
        threads = Threads(2)
        holders = [asyncio.ensure_future(threads.run(gate.call(f"h{i}"), f"h{i}")) for i in range(2)]
        await _until(lambda: len(gate.started) == 2, "two handlers to hold both threads")
        quitter = asyncio.ensure_future(threads.run(gate.call("quitter", hold=False), "q", order=(0,)))
        stayer = asyncio.ensure_future(threads.run(gate.call("stayer", hold=False), "s", order=(1,)))
        await _until(lambda: threads.waiting == 2, "two handlers to queue")
        quitter.cancel()  # as wait_for does at the attempt's deadline
        await _until(lambda: threads.waiting == 1, "the cancelled wait to leave the line")
        gate.release.set()
        await asyncio.gather(*holders)
        assert await stayer == "stayer"
        with pytest.raises(asyncio.CancelledError):
            await quitter
        # Both threads are free again: two held handlers run at once.
        gate.release.clear()
        again = [asyncio.ensure_future(threads.run(gate.call(f"a{i}"), f"a{i}")) for i in range(2)]
        await _until(lambda: gate.running == 2, "two handlers to run at once")
        gate.release.set()
        await asyncio.gather(*again)

    asyncio.run(main())
    assert "quitter" not in gate.started
    assert gate.started[2] == "stayer" and gate.most == 2
