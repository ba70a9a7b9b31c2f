"""The chaos run: the four services as processes over the real PostgreSQL and tansu, a steady
stream of jobs through the HTTP API, and meanwhile kills and restarts of every service and of
the broker (with total loss of its messages) at random moments. At the end it checks, from the
database and from the receiver that logged every `http` call, that no job was lost, none
started twice for one attempt, every job is terminal and every history is consistent.

Bounded in time, loopback only; it stops what it started."""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
import sqlalchemy as sa

from common.launch.broker import LocalBroker
from common.infra.db import session_scope
from common.core.models import Job, JobAttempt
from tests.processes import System
from tests.receiver import Receiver

FAULTS = ("kill_executor", "term_executor", "kill_scanner", "kill_results", "kill_api", "broker_loss")


@dataclass
class Created:
    id: str
    type: str
    execute_at: datetime
    max_retries: int


@dataclass
class ChaosReport:
    seconds: float
    created: int = 0
    create_failures: int = 0
    faults: Counter = field(default_factory=Counter)
    fault_times: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    not_terminal: list[str] = field(default_factory=list)
    double_starts: dict[str, int] = field(default_factory=dict)
    reruns: int = 0
    missing_calls: list[str] = field(default_factory=list)
    history_errors: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    lateness_ms: list[float] = field(default_factory=list)
    worst_after_fault_ms: float = 0.0

    def lines(self) -> list[str]:
        late = sorted(self.lateness_ms) or [0.0]
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
        return [
            f"chaos run of {self.seconds:.0f}s: {self.created} jobs created ({self.create_failures} create "
            f"requests failed and were retried with their Idempotency-Key)",
            "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
            + f" ({sum(self.faults.values())} in all)",
            f"final statuses: {dict(sorted(self.statuses.items()))}",
            f"lost {len(self.lost)}, not terminal {len(self.not_terminal)}, double starts of one attempt "
            f"{len(self.double_starts)}, http jobs never called {len(self.missing_calls)}, "
            f"history inconsistencies {len(self.history_errors)}",
            f"documented re-runs (a run lost with its executor, run again with the same idempotency key): "
            f"{self.reruns}",
            f"lateness of http jobs (first call): p50 {statistics.median(late):.0f} ms, p99 {p99:.0f} ms, "
            f"max {late[-1]:.0f} ms; worst for a job due within 20 s after a fault: {self.worst_after_fault_ms:.0f} ms",
        ]


class Chaos:
    """Drive load and faults against ``system`` for ``seconds``, then verify."""

    def __init__(self, system: System, broker: LocalBroker, receiver: Receiver, seconds: float,
                 rate: float = 25.0, seed: int | None = None, faults: tuple[str, ...] = FAULTS) -> None:
        self.system = system
        self.broker = broker
        self.receiver = receiver
        self.seconds = seconds
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = faults
        self.report = ChaosReport(seconds)
        self.jobs: list[Created] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.executors = [n for n in system.services if n.startswith("executor")]
        self.scanners = [n for n in system.services if n.startswith("scanner")]

    # -- load ------------------------------------------------------------------------------
    def _create(self, n: int) -> None:
        kind = self.rng.random()
        if kind < 0.85:
            body: dict[str, Any] = {"type": "http", "payload": {"url": f"{self.receiver.url}/job/{n}"}}
        elif kind < 0.95:
            body = {"type": "fail", "payload": {"message": "chaos"}, "max_retries": 2}
        else:
            body = {"type": "sleep", "payload": {"seconds": 1.5}, "timeout_seconds": 10}
        body.update(name=f"chaos-{n}", delay_seconds=round(self.rng.uniform(1.0, 15.0), 3))
        key = f"chaos-{uuid.uuid4()}"
        give_up = time.monotonic() + 90
        while time.monotonic() < give_up:
            try:
                response = requests.post(f"{self.system.base_url}/api/jobs", json=body,
                                         headers={"Idempotency-Key": key}, timeout=10)
                if response.status_code in (200, 201):
                    data = response.json()
                    with self.lock:
                        self.jobs.append(Created(data["id"], data["type"],
                                                 datetime.fromisoformat(data["execute_at"]), data["max_retries"]))
                    return
            except requests.RequestException:
                pass
            with self.lock:
                self.report.create_failures += 1
            time.sleep(0.5)
        raise AssertionError(f"job chaos-{n} could not be created within 90 s")

    def _load(self, until: float) -> None:
        with ThreadPoolExecutor(8) as pool:
            n = 0
            futures = []
            next_at = time.monotonic()
            while next_at < until:
                futures.append(pool.submit(self._create, n))
                n += 1
                # Paced on a schedule, not by sleeps that a loaded machine stretches: the run
                # submits ``rate`` jobs a second whatever the machine does.
                next_at += 1 / self.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            for future in futures:
                future.result()

    # -- faults ----------------------------------------------------------------------------
    def _fault(self, kind: str) -> None:
        self.report.faults[kind] += 1
        self.report.fault_times.append(time.monotonic())
        pause = self.rng.uniform(0.5, 3.0)
        if kind == "broker_loss":
            port = self.broker.port
            self.broker.kill()
            time.sleep(pause)
            self.broker.port = port
            self.broker.start()
            return
        if kind in ("kill_executor", "term_executor"):
            name = self.rng.choice(self.executors)
        elif kind == "kill_scanner":
            name = self.rng.choice(self.scanners)
        else:
            name = {"kill_results": "results", "kill_api": "api"}[kind]
        if kind == "term_executor":
            self.system.services[name].stop()
        else:
            self.system.kill(name)
        time.sleep(pause)
        self.system.restart(name)
        if name == "api":
            self.system.wait_ready(60)

    def _faults(self, until: float) -> None:
        # A fault 4-8 s after the start of the previous one: the time a fault takes (a restart,
        # the API's readiness) does not thin them out on a slow machine.
        last_broker = 0.0
        next_at = time.monotonic() + self.rng.uniform(4.0, 8.0)
        while not self.stop.wait(max(0.0, next_at - time.monotonic())) and time.monotonic() < until:
            next_at = time.monotonic() + self.rng.uniform(4.0, 8.0)
            kinds = [k for k in self.kinds if k != "broker_loss" or time.monotonic() - last_broker > 25]
            if not kinds:
                continue
            kind = self.rng.choice(kinds)
            if kind == "broker_loss":
                last_broker = time.monotonic()
            self._fault(kind)

    # -- run and verify --------------------------------------------------------------------
    def run(self, settle: float = 120.0) -> ChaosReport:
        load_until = self.t0 + self.seconds
        injector = threading.Thread(target=self._faults, args=(load_until,), name="chaos-faults")
        injector.start()
        try:
            self._load(load_until)
        finally:
            self.stop.set()
            injector.join()
        self.report.created = len(self.jobs)
        self._wait_terminal(settle)
        self._verify()
        return self.report

    def _statuses(self) -> dict[str, str]:
        ids = [uuid.UUID(j.id) for j in self.jobs]
        with session_scope(self.system.settings) as session:
            return {str(i): s for i, s in session.execute(sa.select(Job.id, Job.status).where(Job.id.in_(ids)))}

    def _wait_terminal(self, settle: float) -> None:
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            statuses = self._statuses()
            if len(statuses) == len(self.jobs) and all(s in ("SUCCESS", "FAILED", "CANCELLED") for s in statuses.values()):
                return
            time.sleep(1.0)

    def _verify(self) -> None:
        report = self.report
        ids = [uuid.UUID(j.id) for j in self.jobs]
        with session_scope(self.system.settings) as session:
            rows = {str(job.id): job for job in session.scalars(sa.select(Job).where(Job.id.in_(ids)))}
            history: dict[str, list[JobAttempt]] = defaultdict(list)
            for attempt in session.scalars(
                sa.select(JobAttempt).where(JobAttempt.job_id.in_(ids)).order_by(JobAttempt.attempt)
            ):
                history[str(attempt.job_id)].append(attempt)
            for row in rows.values():
                session.expunge(row)
        calls = self.receiver.snapshot()
        first_call: dict[str, datetime] = {}
        for call in calls:
            job_id = (call.key or "").split(":")[0]
            if job_id not in first_call or call.arrived < first_call[job_id]:
                first_call[job_id] = call.arrived
        report.double_starts = self.receiver.double_starts()
        rerun_jobs = {key.split(":")[0] for key in self.receiver.reruns()}
        wall_anchor = datetime.now().astimezone() - timedelta(seconds=time.monotonic())
        fault_walls = [wall_anchor + timedelta(seconds=t) for t in report.fault_times]
        for created in self.jobs:
            job = rows.get(created.id)
            if job is None:
                report.lost.append(created.id)
                continue
            report.statuses[job.status] += 1
            if job.status not in ("SUCCESS", "FAILED", "CANCELLED"):
                report.not_terminal.append(f"{created.id} {job.status}")
            report.history_errors += self._check_history(created, job, history[created.id])
            if created.type == "http":
                if created.id not in first_call:
                    report.missing_calls.append(created.id)
                    continue
                late = (first_call[created.id] - created.execute_at).total_seconds() * 1000
                report.lateness_ms.append(late)
                if late < 0:
                    report.history_errors.append(f"{created.id}: called {-late:.1f} ms early")
                if any(timedelta(0) <= created.execute_at - f <= timedelta(seconds=20) for f in fault_walls):
                    report.worst_after_fault_ms = max(report.worst_after_fault_ms, late)
                if created.id in rerun_jobs:
                    report.reruns += 1
                    if not any("lost" in (r.error or "") for r in history[created.id]):
                        report.history_errors.append(f"{created.id}: re-run without a lost attempt in its history")

    @staticmethod
    def _check_history(created: Created, job: Job, rows: list[JobAttempt]) -> list[str]:
        problems = []
        numbers = [r.attempt for r in rows]
        if numbers != list(range(1, len(rows) + 1)):
            problems.append(f"{created.id}: attempt numbers {numbers}")
        if job.attempts != len(rows):
            problems.append(f"{created.id}: job says {job.attempts} attempts, history has {len(rows)}")
        if job.status == "SUCCESS" and (not rows or rows[-1].status != "SUCCESS"):
            problems.append(f"{created.id}: SUCCESS but last attempt {rows[-1].status if rows else None}")
        if job.status == "FAILED" and rows and rows[-1].status != "FAILED":
            problems.append(f"{created.id}: FAILED but last attempt {rows[-1].status}")
        if any(r.status == "RUNNING" for r in rows) and job.status in ("SUCCESS", "FAILED"):
            problems.append(f"{created.id}: a finished job has an attempt still RUNNING")
        if created.type == "fail" and job.status != "FAILED":
            problems.append(f"{created.id}: a fail job ended {job.status}")
        if created.type == "fail" and job.status == "FAILED" and len(rows) > created.max_retries + 1:
            problems.append(f"{created.id}: {len(rows)} attempts for max_retries {created.max_retries}")
        if created.type == "http" and job.status != "SUCCESS":
            problems.append(f"{created.id}: an http job ended {job.status}: {job.error}")
        return problems
