"""Schedules through the processes: an every-2-seconds schedule fires on time for a minute
(its lateness measured at a receiver and reported by the API), pause stops it, resume restarts
it without a burst; a slow job with overlap 'skip' never runs twice at once."""

from __future__ import annotations

import os

import statistics
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest
import requests

from common.infra.clock import utcnow
from tests.helpers import wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

#: How long the schedule runs before it is paused: 24 s in the suite (its time budget);
#: SCHEDULE_RUN_SECONDS=60 for the minute the issue asked for.
RUN_SECONDS = float(os.environ.get("SCHEDULE_RUN_SECONDS", "24"))


def call(system: System, method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{system.base_url}{path}", timeout=10, headers=system.headers, **kwargs)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def occurrences(system: System, schedule_id: str) -> list[dict]:
    return call(system, "get", f"/api/jobs?schedule_id={schedule_id}&limit=500")["items"]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.timeout(300)
def test_an_every_two_seconds_schedule_is_on_time_pauses_and_resumes_without_a_burst(
        make_system: Callable[..., System], receiver: Receiver) -> None:
    system = make_system()
    # Starting a few seconds out, as a schedule usually does: an occurrence due within a moment
    # of the create is as late as a job created a moment before its time (README, guarantees).
    schedule = call(system, "post", "/api/schedules", json={
        "name": "every-2s", "cron": "*/2 * * * * *", "start_at": (utcnow() + timedelta(seconds=3)).isoformat(),
        "job": {"name": "tick", "type": "http", "payload": {"url": f"{receiver.url}/tick"}, "max_retries": 0},
    })
    sid = schedule["id"]
    started = utcnow()
    # Meanwhile, a slow job (2.5 s) every second with overlap 'skip': never two at once.
    slow = call(system, "post", "/api/schedules", json={
        "name": "slow", "interval_seconds": 1, "overlap_policy": "skip",
        "job": {"name": "slow", "type": "sleep", "payload": {"seconds": 2.5}, "max_retries": 0},
    })
    time.sleep(8.0)
    call(system, "post", f"/api/schedules/{slow['id']}/pause")
    time.sleep(RUN_SECONDS - 8.0)
    paused = call(system, "post", f"/api/schedules/{sid}/pause")
    paused_at = datetime.fromisoformat(paused["paused_at"])
    assert paused["paused"] and paused["next_fire_at"] is None

    # On time for RUN_SECONDS: every occurrence due in it reached the receiver once, milliseconds late.
    jobs = {job["id"]: job for job in occurrences(system, sid)}
    calls = [c for c in receiver.snapshot() if c.path == "/tick"]
    assert not receiver.double_starts()
    arrivals = {c.key.split(":")[0]: c.arrived for c in calls}
    due = [job for job in jobs.values() if started + timedelta(seconds=1) < datetime.fromisoformat(
        job["execute_at"]) < paused_at - timedelta(seconds=1)]
    assert len(due) >= RUN_SECONDS / 2 - 4
    lateness = [(arrivals[job["id"]] - datetime.fromisoformat(job["execute_at"])).total_seconds() * 1000
                for job in due]
    assert all(late >= 0 for late in lateness), "an occurrence fired before its time"
    assert all(datetime.fromisoformat(job["scheduled_for"]).second % 2 == 0 for job in due)
    p50, p99 = statistics.median(lateness), quantile(lateness, 0.99)
    print(f"\nevery-2s schedule, {len(lateness)} occurrences over {RUN_SECONDS:.0f}s: lateness at the receiver "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lateness):.1f} ms")
    assert p99 < 500, f"p99 lateness {p99:.1f} ms"
    figures = wait_for(lambda: call(system, "get", f"/api/schedules/{sid}")["on_time"], what="figures")
    print(f"the API's on-time figures: {figures}")
    assert figures["by_status"].get("SUCCESS", 0) >= len(due) - 1
    assert figures["lateness_ms"]["p50"] is not None and figures["lateness_ms"]["p99"] < 500

    # Paused: nothing fires (an occurrence that had started may still arrive at once).
    time.sleep(4.0)
    assert [c for c in receiver.snapshot() if c.path == "/tick" and c.arrived > paused_at + timedelta(seconds=0.5)] == []
    assert all(job["status"] in ("SUCCESS", "RUNNING") for job in occurrences(system, sid))

    # Resumed: the next occurrences run at their times; the ones missed while paused do not
    # (catch-up 'skip', the default), so there is no burst. Resuming just after an even second puts
    # the first occurrence two seconds out: one due a moment after the resume may be as late as a
    # job created a moment before its time, which says nothing about a burst.
    time.sleep(2.05 - utcnow().timestamp() % 2)
    resumed_at = utcnow()
    resumed = call(system, "post", f"/api/schedules/{sid}/resume")
    assert not resumed["paused"]
    time.sleep(5.5)
    after = [c for c in receiver.snapshot() if c.path == "/tick" and c.arrived > paused_at + timedelta(seconds=0.5)]
    assert 2 <= len(after) <= 3, [c.arrived.isoformat() for c in after]
    resumed_jobs = sorted((job for job in occurrences(system, sid)
                           if datetime.fromisoformat(job["scheduled_for"]) > paused_at), key=lambda j: j["scheduled_for"])
    fire_times = [datetime.fromisoformat(job["scheduled_for"]) for job in resumed_jobs]
    assert all(at > resumed_at for at in fire_times), "an occurrence missed while paused ran"
    assert all(b - a >= timedelta(seconds=2) for a, b in zip(fire_times, fire_times[1:])), "a burst after resume"
    arrived = {c.key.split(":")[0]: c.arrived for c in after}
    assert all(timedelta(0) <= arrived[job["id"]] - datetime.fromisoformat(job["execute_at"]) < timedelta(seconds=1)
               for job in resumed_jobs if job["id"] in arrived), "an occurrence after resume was not on time"
    call(system, "post", f"/api/schedules/{sid}/pause")

    # The slow schedule: the occurrences that ran never overlapped, the others were SKIPPED.
    wait_for(lambda: all(job["status"] in ("SUCCESS", "SKIPPED") for job in occurrences(system, slow["id"])),
             timeout=10, what="the slow occurrences to settle")
    settled = occurrences(system, slow["id"])
    ran = sorted((datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
                 for j in settled if j["status"] == "SUCCESS")
    skipped = [j for j in settled if j["status"] == "SKIPPED"]
    print(f"slow schedule: {len(ran)} ran, {len(skipped)} skipped")
    assert len(ran) >= 2 and len(skipped) >= 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(ran, ran[1:])), "two occurrences overlapped"
    assert all("still running" in j["error"] for j in skipped)
