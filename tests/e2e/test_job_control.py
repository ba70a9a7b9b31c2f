"""Job control end to end: the four services as processes over the real PostgreSQL and tansu, an
`http` receiver in this process that answers as each test scripts it. Trigger fires a job now,
rerun runs a failed job again with its attempts numbered on, PATCH moves a job an executor
already holds (its old dispatch never runs), and a redrive reruns several failed jobs."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import requests

from common.infra.clock import utcnow
from tests.e2e.conftest import attempts, create, job, module_system
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
    """One system for the module (2 s windows, 1 s sweeps, 6 s leases)."""
    yield from module_system(pg_url, broker, tmp_path_factory.mktemp("e2e-control-logs"))


def post(system: System, path: str, body: dict | None = None) -> dict:
    response = requests.post(f"{system.base_url}{path}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def status_is(system: System, job_id: str, *statuses: str) -> dict | None:
    current = job(system, job_id)
    return current if current["status"] in statuses else None


def fenced(system: System, job_id: str) -> bool:
    """Whether an executor refused to start a superseded dispatch of the job (its log says so)."""
    logs = "".join(service.log() for name, service in system.services.items() if name.startswith("executor"))
    return bool(re.search(rf"job {job_id} dispatch \d+ attempt 1 not started", logs))


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_trigger_fires_a_far_future_job_now(system: System, receiver: Receiver) -> None:
    tomorrow = utcnow() + timedelta(days=1)
    created = create(system, name="tomorrow", type="http", execute_at=tomorrow.isoformat(),
                     payload={"url": receiver.answer("/tomorrow")})
    assert created["status"] == "SCHEDULED"
    asked = datetime.now(timezone.utc)
    triggered = post(system, f"/api/jobs/{created['id']}/trigger")
    assert triggered["status"] == "QUEUED" and at(triggered["original_execute_at"]) == at(created["execute_at"])
    (call,) = wait_for(lambda: receiver.to("/tomorrow"), timeout=10, what="the triggered call")
    took = (call.arrived - asked).total_seconds()
    print(f"\ntriggered job called {took * 1000:.0f} ms after the trigger request")
    assert 0 <= took < 1.0
    done = wait_for(lambda: status_is(system, created["id"], "SUCCESS", "FAILED"), timeout=10, what="SUCCESS")
    assert done["status"] == "SUCCESS" and done["attempts"] == 1


def test_a_triggered_queued_job_runs_once_now(system: System, receiver: Receiver) -> None:
    created = create(system, name="soon", type="http", delay_seconds=5, payload={"url": receiver.answer("/soon")})
    wait_for(lambda: status_is(system, created["id"], "QUEUED"), timeout=10, what="QUEUED")  # an executor holds it
    asked = datetime.now(timezone.utc)
    post(system, f"/api/jobs/{created['id']}/trigger")
    (call,) = wait_for(lambda: receiver.to("/soon"), timeout=10, what="the triggered call")
    assert call.arrived < at(created["execute_at"]) and (call.arrived - asked).total_seconds() < 1.0
    # At its old time the dispatch the executor held is refused: the job ran once.
    wait_for(lambda: fenced(system, created["id"]), timeout=15, what="the old dispatch refused")
    assert len(receiver.to("/soon")) == 1
    assert [(a["attempt"], a["status"]) for a in attempts(system, created["id"])] == [(1, "SUCCESS")]


def test_rerun_of_a_failed_job_gets_its_retries_again(system: System, receiver: Receiver) -> None:
    url = receiver.answer("/flaky", 500, 500, 500, 200)
    created = create(system, name="flaky", type="http", delay_seconds=0, max_retries=1, payload={"url": url})
    failed = wait_for(lambda: status_is(system, created["id"], "FAILED", "SUCCESS"), timeout=20, what="FAILED")
    assert failed["status"] == "FAILED" and failed["attempts"] == 2
    rerun = post(system, f"/api/jobs/{created['id']}/rerun")
    assert (rerun["runs"], rerun["attempts"], rerun["error"]) == (2, 2, None)
    # The rerun has 1 + max_retries attempts of its own: 3 fails, 4 succeeds.
    done = wait_for(lambda: status_is(system, created["id"], "FAILED", "SUCCESS"), timeout=20, what="rerun settled")
    assert done["status"] == "SUCCESS" and done["attempts"] == 4 and done["runs"] == 2
    history = [(a["attempt"], a["status"]) for a in attempts(system, created["id"])]
    assert history == [(1, "FAILED"), (2, "FAILED"), (3, "FAILED"), (4, "SUCCESS")]
    calls = receiver.to("/flaky")
    assert [call.run for call in calls] == ["1", "2", "3", "4"]
    assert [call.key for call in calls] == [f"{created['id']}:{n}" for n in (1, 2, 3, 4)]


def test_patch_moves_a_queued_job_and_its_old_dispatch_never_runs(
    system: System, receiver: Receiver
) -> None:
    created = create(system, name="moved", type="http", delay_seconds=4,
                     payload={"url": receiver.answer("/before"), "json": {"v": 1}})
    wait_for(lambda: status_is(system, created["id"], "QUEUED"), timeout=10, what="QUEUED")  # an executor holds it
    new_time = at(created["execute_at"]) + timedelta(seconds=2)
    response = requests.patch(f"{system.base_url}/api/jobs/{created['id']}", timeout=10, json={
        "execute_at": new_time.isoformat(), "payload": {"url": receiver.answer("/after"), "json": {"v": 2}}})
    assert response.status_code == 200, response.text
    assert at(response.json()["original_execute_at"]) == at(created["execute_at"])
    (call,) = wait_for(lambda: receiver.to("/after"), timeout=15, what="the call with the new payload")
    late_ms = (call.arrived - new_time).total_seconds() * 1000
    print(f"\npatched job called {late_ms:.1f} ms after its new time")
    assert 0 <= late_ms < system.settings.scan_interval_seconds * 1000
    assert json.loads(call.body) == {"v": 2}
    # The old time passed before the new one: the held dispatch was refused then, not run.
    assert fenced(system, created["id"])
    assert receiver.to("/before") == [] and len(receiver.to("/after")) == 1
    wait_for(lambda: status_is(system, created["id"], "SUCCESS"), timeout=10, what="SUCCESS")


def test_redrive_reruns_the_failed_jobs_it_matches(system: System, receiver: Receiver) -> None:
    jobs = [create(system, name="redrive-e2e", type="http", delay_seconds=0, max_retries=0,
                   payload={"url": receiver.answer(f"/redrive/{i}", 500)}) for i in range(3)]
    other = create(system, name="redrive-e2e-other", type="fail", delay_seconds=0, max_retries=0,
                   payload={"message": "stays failed"})
    for created in [*jobs, other]:
        wait_for(lambda: status_is(system, created["id"], "FAILED"), timeout=20, what="FAILED")
    started = time.monotonic()
    answer = post(system, "/api/jobs/rerun", {"name": "redrive-e2e"})
    assert (answer["rerun"], answer["matched"], answer["more"]) == (3, 3, False)
    for created in jobs:
        done = wait_for(lambda: status_is(system, created["id"], "SUCCESS", "FAILED"), timeout=20, what="rerun")
        assert (done["status"], done["attempts"], done["runs"]) == ("SUCCESS", 2, 2)
    print(f"\nredrive of 3 failed jobs: all SUCCESS {time.monotonic() - started:.2f} s after the request")
    assert [len(receiver.to(f"/redrive/{i}")) for i in range(3)] == [2, 2, 2]
    untouched = job(system, other["id"])
    assert (untouched["status"], untouched["runs"], untouched["attempts"]) == ("FAILED", 1, 1)
