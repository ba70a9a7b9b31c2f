"""End to end: the four services as processes over the real PostgreSQL and tansu. Jobs are
created through the HTTP API; an `http` receiver in this process logs every call it gets.

On time means never early, and late by less than one scan window: a job dispatched when it
should be fires within milliseconds, one that waited for anything periodic (the scanner's next
window, a sweep, a lease) is late by about a window or more. The figures are printed."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta
from typing import Iterator

import pytest
import requests

from common.infra.clock import utcnow
from tests.e2e.conftest import create, module_system
from tests.e2e.conftest import job as get
from tests.helpers import wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def system(pg_url, broker, tmp_path_factory) -> Iterator[System]:
    """One system for the module (the default sweep and a 20 s lease: no fault here)."""
    yield from module_system(pg_url, broker, tmp_path_factory.mktemp("e2e-logs"), lease_seconds=20.0,
                             sweep_interval_seconds=5.0)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_fifty_http_jobs_fire_on_time_once_each(system: System, receiver: Receiver) -> None:
    start = utcnow() + timedelta(seconds=3)
    # Spread over 3-12 s ahead: the first few are dispatched by the API itself, the rest by the
    # scanner's windows (2 s here).
    jobs = []
    for i in range(50):
        due = start + timedelta(milliseconds=180 * i + 7)
        jobs.append(create(
            system, name=f"hook-{i}", type="http", execute_at=due.isoformat(),
            payload={"url": f"{receiver.url}/hook/{i}", "json": {"i": i}},
        ))
    expected = {f"/hook/{i}": parse(job["execute_at"]) for i, job in enumerate(jobs)}
    wait_for(
        lambda: all(get(system, j["id"])["status"] == "SUCCESS" for j in jobs),
        timeout=60, interval=0.5, what="all 50 jobs SUCCESS",
    )
    calls = [c for c in receiver.snapshot() if c.path.startswith("/hook/")]
    paths = [c.path for c in calls]
    assert sorted(paths) == sorted(expected), "a job is missing or was called twice"
    lateness_ms = []
    for path, arrived, key in ((c.path, c.arrived, c.key) for c in calls):
        late = (arrived - expected[path]).total_seconds() * 1000
        assert late >= 0, f"{path} arrived {-late:.1f} ms early"
        assert key and key.endswith(":1")  # job id and attempt
        lateness_ms.append(late)
    lateness_ms.sort()
    p50 = statistics.median(lateness_ms)
    p99 = lateness_ms[min(len(lateness_ms) - 1, int(len(lateness_ms) * 0.99))]
    print(f"\nlateness of 50 http jobs at the receiver: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"max {lateness_ms[-1]:.1f} ms")
    assert lateness_ms[-1] < system.settings.scan_interval_seconds * 1000, "a job was late by a scan window or more"


def test_failing_job_ends_failed_after_four_attempts(system: System) -> None:
    job = create(system, name="always-fails", type="fail", delay_seconds=1, payload={"message": "nope"})
    wait_for(lambda: get(system, job["id"])["status"] == "FAILED", timeout=60, what="FAILED")
    final = get(system, job["id"])
    assert final["attempts"] == 4 and "nope" in final["error"]
    history = requests.get(f"{system.base_url}/api/jobs/{job['id']}/attempts", timeout=10).json()["items"]
    assert [(a["attempt"], a["status"]) for a in history] == [(n, "FAILED") for n in (1, 2, 3, 4)]
    assert all("nope" in a["error"] for a in history)


def test_job_due_three_seconds_after_creation_fires_on_time(system: System, receiver: Receiver) -> None:
    due = utcnow() + timedelta(seconds=3)
    job = create(system, name="soon", type="http", execute_at=due.isoformat(),
                 payload={"url": f"{receiver.url}/soon"})
    wait_for(lambda: "/soon" in receiver.paths(), timeout=30, what="the call")
    arrived = next(c.arrived for c in receiver.snapshot() if c.path == "/soon")
    late_ms = (arrived - parse(job["execute_at"])).total_seconds() * 1000
    print(f"\njob created 3 s before its time: late by {late_ms:.1f} ms")
    assert 0 <= late_ms < system.settings.scan_interval_seconds * 1000
    wait_for(lambda: get(system, job["id"])["status"] == "SUCCESS", timeout=20, what="SUCCESS")


def test_cancelled_queued_job_never_runs(system: System, receiver: Receiver) -> None:
    job = create(system, name="to-cancel", type="http", delay_seconds=8,
                 payload={"url": f"{receiver.url}/cancelled"})
    wait_for(lambda: get(system, job["id"])["status"] == "QUEUED", timeout=20, what="QUEUED")
    response = requests.delete(f"{system.base_url}/api/jobs/{job['id']}", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "CANCELLED"
    # Not a wait for something: the job's time passes, and a call that must not happen gets
    # 2 s more to arrive.
    time.sleep(max(0.0, (parse(job["execute_at"]) - utcnow()).total_seconds()) + 2)
    assert "/cancelled" not in receiver.paths()
    assert get(system, job["id"])["status"] == "CANCELLED"
    assert requests.get(f"{system.base_url}/api/jobs/{job['id']}/attempts", timeout=10).json()["items"] == []
