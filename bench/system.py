"""A whole chronoq system for one benchmark measurement: a fresh PostgreSQL database (migrated,
dropped afterwards) and tansu broker (:func:`bench.benchlib.bench_environment`), and the
services as child processes — ``python -m api|scheduler_service|executor_service|result_service``,
the same commands ``chronoq up`` runs — each with its settings in ``CHRONOQ_*`` variables and
its output in a log file. The services are black boxes: the benchmarks only start them, write
jobs into the database, talk to them over the network and read the database and /proc.

The settings are those of ``chronoq up`` on this machine (its short consumer-group timeouts),
plus what a benchmark asks for; ``CHRONOQ_*`` variables in the shell win over both, so
``CHRONOQ_EXECUTOR_WORKERS=64 python -m bench.fire`` measures another deployment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.benchlib import bench_environment
from common.core.models import Job
from common.launch.process import terminate
from common.infra.config import PREFIX, Settings, load_settings, settings_env
from common.infra.db import get_engine
from common.launch.broker import free_port

MODULES = {"api": "api", "scanner": "scheduler_service", "executor": "executor_service", "results": "result_service"}

#: What ``chronoq up`` sets for a one-machine run (common/launch/localrun.py).
LOCAL_RUN: dict[str, Any] = dict(
    kafka_session_timeout_ms=6000, kafka_max_poll_interval_ms=10000, group_join_timeout_seconds=20.0,
    # The benchmarks' receivers listen on this machine; opened here, not by a weaker default.
    http_allow_private=("127.0.0.1/32",),
    # Benchmarks call the API without credentials (bench.api --auth measures it with them),
    # and measure past the per-tenant create limits.
    auth_enabled=False, tenant_creates_per_second=1e9, tenant_max_pending_jobs=10**9,
)
#: Settings the system itself owns; the shell cannot move them.
OWNED = {"database_url", "kafka_bootstrap", "api_port", "health_port", "health_host", "home", "executor_id"}


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every child process is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def shell_settings() -> dict[str, Any]:
    """``CHRONOQ_*`` settings from the shell that differ from the defaults (parsed and checked)."""
    parsed = load_settings({k: v for k, v in os.environ.items() if k.startswith(PREFIX)})
    return {
        f.name: getattr(parsed, f.name) for f in fields(Settings)
        if f.name not in OWNED and getattr(parsed, f.name) != f.default
    }


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a service process exactly these settings."""
    env = settings_env(settings)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Service:
    """One service process, its log file and (for all but the API) its health port."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    health_port: int = 0
    process: subprocess.Popen | None = None  # type: ignore[type-arg]

    def start(self) -> "Service":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops them in order
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        process, self.process = self.process, None
        return terminate(process, timeout, sig)

    def health(self) -> dict[str, Any] | None:
        """The service's /healthz report, or None when it does not answer."""
        if not self.health_port:
            return None
        try:
            return requests.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).json()
        except (requests.RequestException, ValueError):
            return None

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class BenchSystem:
    """Database, broker and services for one measurement; use as a context manager.

    ``services`` are started in this order (with ``executors`` executors after the scanner);
    they stop in reverse, so the result writer records the last updates before it goes."""

    def __init__(
        self,
        *,
        executors: int = 1,
        services: Sequence[str] = ("results", "scanner", "executor", "api"),
        keep_logs: bool = False,
        **settings: Any,
    ) -> None:
        self.executors = executors
        self.names = list(services)
        self.keep_logs = keep_logs
        self.overrides = {**LOCAL_RUN, **settings, **shell_settings()}
        self.services: dict[str, Service] = {}
        self.settings: Settings | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="chronoq-bench-"))
        self._stack = ExitStack()
        self._stopped = False

    # -- start and stop ---------------------------------------------------------------------

    def __enter__(self) -> "BenchSystem":
        try:
            return self.start()
        except BaseException:
            self.stop(failed=True)
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop(failed=exc_type is not None)

    def start(self, timeout: float = 90.0) -> "BenchSystem":
        self.settings = self._stack.enter_context(
            bench_environment(api_port=free_port(), **self.overrides)
        )
        env = service_env(self.settings)
        for name in self.names:
            count = self.executors if name == "executor" else 1
            for i in range(count):
                label = f"{name}{i + 1}" if name == "executor" else name
                extra = {"CHRONOQ_EXECUTOR_ID": f"bench-{label}"} if name == "executor" else {}
                port = 0 if name == "api" else free_port()
                if port:
                    extra["CHRONOQ_HEALTH_PORT"] = str(port)
                service = Service(label, MODULES[name], {**env, **extra}, self.log_dir / f"{label}.log", port)
                self.services[label] = service.start()
        self.wait_ready(timeout)
        return self

    def stop(self, failed: bool = False, kill_executors: bool = False) -> None:
        """Stop every service (executors with SIGKILL when asked: a SIGTERM makes an executor
        hand back each waiting attempt), then drop the database and stop the broker. Only the
        first call does anything."""
        if self._stopped:
            return
        self._stopped = True
        for service in reversed(list(self.services.values())):
            kill = kill_executors and service.module == "executor_service"
            service.stop(signal.SIGKILL if kill else signal.SIGTERM)
        self.services.clear()
        self._stack.close()
        if failed or self.keep_logs:
            print(f"service logs kept in {self.log_dir}", flush=True)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise with its log's tail if a service exited."""
        for service in self.services.values():
            if service.process is not None and service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.process.returncode}:\n{service.tail()}"
                )

    def wait_ready(self, timeout: float) -> None:
        """The API answers /readyz and every consumer (executors, result writer) reports a
        stable group with partitions, all partitions of the jobs topic owned. A service whose
        health endpoint never answers is not waited for (the warm-up still proves it works)."""
        deadline = time.monotonic() + timeout
        settings = self.require()
        while time.monotonic() < deadline:
            self.check_alive()
            if self._ready(settings, quiet_grace=time.monotonic() > deadline - timeout / 2):
                return
            time.sleep(0.25)
        raise RuntimeError("the system did not become ready:\n" + self.logs())

    def _ready(self, settings: Settings, quiet_grace: bool) -> bool:
        if "api" in self.services:
            try:
                if requests.get(f"{self.api_url}/readyz", timeout=2).status_code != 200:
                    return False
            except requests.RequestException:
                return False
        executor_partitions = 0
        answered = True
        for service in self.services.values():
            if service.module not in ("executor_service", "result_service"):
                continue
            report = service.health()
            if report is None:
                answered = False
                continue
            consumers = report.get("consumers", [])
            if not consumers or any(c.get("state") != "stable" or not c.get("partitions") for c in consumers):
                return False
            if service.module == "executor_service":
                executor_partitions += sum(c["partitions"] for c in consumers if c.get("topic") == settings.topic_jobs)
        if not answered:
            return quiet_grace  # no health endpoint: give it half the timeout, then go on
        return "executor" not in self.names or executor_partitions >= settings.topic_partitions

    def logs(self, chars: int = 2000) -> str:
        return "\n".join(f"==== {s.name}\n{s.tail(chars)}" for s in self.services.values())

    # -- access -----------------------------------------------------------------------------

    def require(self) -> Settings:
        assert self.settings is not None, "the system is not started"
        return self.settings

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.require().api_port}"

    @property
    def engine(self) -> Engine:
        return get_engine(self.require())

    def executor_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.module == "executor_service"]

    def warm_up(self, jobs: int = 48, timeout: float = 90.0) -> None:
        """Noop jobs due now, enough to land on every partition of the jobs topic; returns once
        all succeeded: scanner, every executor and the result writer do their part."""
        now = datetime.now(timezone.utc)
        tag = f"warm-up-{uuid.uuid4().hex[:6]}"
        insert_jobs(self.engine, (job_row(tag, "noop", {}, now) for _ in range(jobs)), quiet=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with self.engine.connect() as conn:
                done = conn.scalar(sa.select(sa.func.count()).where(Job.name == tag, Job.status == "SUCCESS"))
            if done == jobs:
                return
            time.sleep(0.5)
        raise RuntimeError(f"warm-up: {done}/{jobs} jobs succeeded within {timeout:.0f}s:\n{self.logs()}")


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc_from_ns(ns: int) -> datetime:
    """ns since the epoch as an aware datetime, exact to the microsecond (float seconds are not)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def job_row(
    name: str, type_: str, payload: dict[str, Any], execute_at: datetime, *,
    timeout_seconds: float = 30.0, max_retries: int = 0, misfire_grace_seconds: float | None = None,
) -> dict[str, Any]:
    """A jobs row as the API would store it (SCHEDULED, not dispatched yet)."""
    now = datetime.now(timezone.utc)
    return dict(
        id=uuid.uuid4(), name=name, type=type_, payload=payload, meta={}, status="SCHEDULED",
        execute_at=execute_at, priority=0, max_retries=max_retries, timeout_seconds=timeout_seconds,
        misfire_grace_seconds=misfire_grace_seconds, attempts=0, lost_attempts=0, dispatch_token=0,
        created_at=now, updated_at=now,
    )


def insert_jobs(engine: Engine, rows: Iterable[dict[str, Any]], chunk: int = 5000, quiet: bool = False) -> int:
    """Insert job rows in chunks of one transaction each; prints progress. Returns the count."""
    started = time.monotonic()
    total = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal total
        with engine.begin() as conn:
            conn.execute(sa.insert(Job), batch)
        total += len(batch)
        batch.clear()
        if not quiet and total % (chunk * 10) == 0:
            print(f"    inserted {total:,} jobs ({time.monotonic() - started:.0f}s)", flush=True)

    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    with engine.connect() as conn:  # fresh statistics, as autovacuum would give a real deployment
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE jobs"))
    return total


def rss_bytes(pid: int, children: bool = True) -> int:
    """Resident memory of ``pid`` (plus its descendants), from /proc."""
    total = 0
    pids = [pid] + (descendants(pid) if children else [])
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """CPU time (user + system) of ``pid`` and its reaped children, and (``tree``) of its live
    descendants; 0 once it is gone."""
    total = 0
    for p in [pid] + (descendants(pid) if tree else []):
        try:
            with open(f"/proc/{p}/stat") as stat:
                parts = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(x) for x in parts[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle or waiting on I/O)."""
    with open("/proc/stat") as stat:
        fields_ = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields_
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU from one moment on (the fire window): that of the measured processes, per job, and
    that of everything on the machine outside this benchmark — its own process tree and the
    PostgreSQL backends of its database — which shows whether the run had company."""

    def __init__(self, pids: list[int], engine: Engine | None = None, also_ours: Sequence[int] = ()) -> None:
        self.pids = pids
        self.engine = engine
        self.also_ours = list(also_ours)  # e.g. the Redis server of a Celery run
        self.start: float | None = None
        self._other_start = 0.0
        self._wall_start = 0.0
        self._backends: dict[int, float] = {}  # PostgreSQL backend pid → its CPU when last seen

    def total(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _other(self) -> float:
        if self.engine is not None:
            with self.engine.connect() as conn:
                for pid in conn.scalars(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")):
                    self._backends.setdefault(pid, 0.0)
        for pid in self._backends:
            seen = cpu_seconds(pid, tree=False)
            if seen:  # a backend that has gone keeps the CPU it was last seen with
                self._backends[pid] = seen
        ours = cpu_seconds(os.getpid()) + sum(cpu_seconds(pid, tree=False) for pid in self.also_ours)
        return machine_busy_seconds() - ours - sum(self._backends.values())

    def mark(self) -> None:
        if self.start is None:
            self.start = self.total()
            self._other_start = self._other()
            self._wall_start = time.monotonic()

    def per_job_ms(self, jobs: int) -> float:
        return 1000 * (self.total() - (self.start or 0.0)) / jobs if self.start is not None else float("nan")

    def other_cores(self) -> float:
        """Cores' worth of CPU the rest of the machine used since the mark."""
        if self.start is None:
            return float("nan")
        return max(0.0, self._other() - self._other_start) / max(1e-9, time.monotonic() - self._wall_start)


def pids_named(name: str) -> list[int]:
    """Processes whose command name is ``name`` (e.g. ``redis-server``)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if entry.isdigit() and comm.read().strip() == name:
                    found.append(int(entry))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return found
