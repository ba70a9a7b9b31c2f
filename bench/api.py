"""Benchmark: how fast the HTTP API creates jobs through gunicorn, on PostgreSQL and a tansu broker.

    .venv/bin/python -m bench.api                   # about a minute and a half
    .venv/bin/python -m bench.api --seconds 3 --clients 8 --batches 1000
    .venv/bin/python -m bench.api --auth            # the same with API keys, roles and the audit log

It starts the API alone with ``python -m api`` (the production gunicorn set-up and default
settings: INFO logs, access log; ``CHRONOQ_*`` variables in the shell change them, e.g.
``CHRONOQ_API_WORKERS=3``) on a database and broker of its own (bench/system.py), then measures

- single creates (``POST /api/jobs``) with 1, 8 and 32 concurrent keep-alive clients, for jobs
  due in a day (stored only) and jobs due in 30 s (which the API also dispatches itself);
- batch creates (``POST /api/jobs/batch``) of 1,000 and 10,000 jobs, both kinds;

and prints a table: requests and jobs per second, request latency p50/p99, and where the CPU
went, per job: in the API's gunicorn processes, in the database backends serving it, and in
the client (one asyncio process; its CPU seconds per wall second are shown too — far below
100 % means the client was not what limited the run). Needs PostgreSQL on 127.0.0.1:5432 with
trust auth (``BENCH_POSTGRES_URL`` overrides it); the database is dropped afterwards."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from common.core import apikeys
from common.core.roles import Role
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope

from bench.benchlib import print_table
from bench.system import BenchSystem, cpu_seconds, exit_on_sigterm

DUE = {"far": 86_400.0, "soon": 30.0}  # seconds from now; "soon" is always before the scan horizon


def job(due: str, n: int = 0) -> dict[str, object]:
    return {"name": f"bench-{n}", "type": "noop", "payload": {"n": n}, "delay_seconds": DUE[due]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class CpuMeter:
    """CPU seconds used by the API (gunicorn master and workers) and by the PostgreSQL backends
    connected to the benchmark's database."""

    def __init__(self, system: BenchSystem) -> None:
        self.api_pid = system.services["api"].pid
        self.database = make_url(system.require().database_url).database
        self.engine = system.engine

    def read(self) -> tuple[float, dict[int, float]]:
        with self.engine.connect() as conn:
            backends = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
                {"db": self.database},
            ).scalars().all()
        return cpu_seconds(self.api_pid), {pid: cpu_seconds(pid) for pid in backends}

    @staticmethod
    def used(before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]) -> tuple[float, float]:
        """(API, database) CPU seconds between two readings; a backend that started in
        between counts from zero."""
        db = sum(seconds - before[1].get(pid, 0.0) for pid, seconds in after[1].items())
        return after[0] - before[0], db


@dataclass
class Run:
    """One measured configuration."""

    kind: str  # "single" or "batch"
    due: str
    clients: int
    batch: int = 1
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    api_cpu: float = 0.0
    db_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def jobs(self) -> int:
        return (self.requests - self.errors) * self.batch

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def per_job_us(self, seconds: float) -> str:
        return f"{seconds / self.jobs * 1e6:,.0f}" if self.jobs else "-"

    def row(self) -> list[str]:
        return [
            self.kind, self.due, str(self.clients), f"{self.batch:,}", f"{self.requests:,}",
            f"{self.requests / self.seconds:,.0f}", f"{self.jobs_per_s:,.0f}",
            f"{pct(self.latencies, 0.5):.1f}", f"{pct(self.latencies, 0.99):.1f}", str(self.errors),
            self.per_job_us(self.api_cpu), self.per_job_us(self.db_cpu), self.per_job_us(self.client_cpu),
            f"{100 * self.client_cpu / self.seconds:.0f}%",
        ]


HEADER = ["endpoint", "due", "clients", "jobs/req", "requests", "req/s", "jobs/s", "p50 ms", "p99 ms", "errors",
          "API CPU us/job", "DB CPU us/job", "client CPU us/job", "client busy"]


async def measure(base: str, run: Run, body: bytes, meter: CpuMeter, *, seconds: float,
                  max_requests: int | None, credential: dict[str, str]) -> Run:
    """``run.clients`` keep-alive clients post ``body`` back to back for ``seconds`` (or until
    ``max_requests`` are sent)."""
    path = "/api/jobs" if run.kind == "single" else "/api/jobs/batch"
    expected = 201 if run.kind == "single" else 200
    headers = {"Content-Type": "application/json", **credential}
    connector = aiohttp.TCPConnector(limit=run.clients)
    sent = 0
    async with aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        # One request per connection first, so connects and worker start-up are not timed.
        await asyncio.gather(*(session.get("/healthz") for _ in range(run.clients)))
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal sent
            while time.monotonic() < deadline and (max_requests is None or sent < max_requests):
                sent += 1
                t0 = time.perf_counter()
                async with session.post(path, data=body, headers=headers) as response:
                    await response.read()
                run.latencies.append((time.perf_counter() - t0) * 1000)
                run.requests += 1
                run.statuses[response.status] = run.statuses.get(response.status, 0) + 1
                run.errors += response.status != expected

        before = meter.read()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(run.clients)))
        run.seconds = time.perf_counter() - wall0
        run.client_cpu = time.process_time() - cpu0
        run.api_cpu, run.db_cpu = CpuMeter.used(before, meter.read())
    return run


def report(run: Run) -> None:
    what = f"{run.clients:>3} clients" if run.kind == "single" else f"{run.batch:>6,} jobs x {run.clients}"
    print(f"  {run.kind:<6} {run.due:<4} {what}: {run.jobs_per_s:8,.0f} jobs/s  p50 {pct(run.latencies, 0.5):7.1f} ms  "
          f"p99 {pct(run.latencies, 0.99):7.1f} ms  answers {run.statuses}", flush=True)


def writer_key(settings: Settings) -> dict[str, str]:
    """The Authorization header of a new writer key of tenant ``bench``."""
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant="bench", role=Role.WRITER, name="bench", created_by="bench.api",
                                  keyring=None, now=utcnow())
    return {"Authorization": f"Bearer {made.key}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each single-create run")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients of the single-create runs")
    parser.add_argument("--batches", default="1000,10000", help="batch sizes ('' for none)")
    parser.add_argument("--batch-jobs", type=int, default=60_000, help="jobs per batch run (at most)")
    parser.add_argument("--batch-clients", type=int, default=2, help="concurrent clients of the batch runs")
    parser.add_argument("--auth", action="store_true",
                        help="with authentication on: every request carries a writer's API key and is audited")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c]
    batches = [int(b) for b in args.batches.split(",") if b]
    exit_on_sigterm()

    runs: list[Run] = []
    with BenchSystem(services=("api",), auth_enabled=args.auth) as system:
        settings = system.require()
        credential = writer_key(settings) if args.auth else {}
        print(f"API at {system.api_url} ({settings.api_workers} workers), broker {settings.kafka_bootstrap}, "
              f"authentication {'on' if args.auth else 'off'}", flush=True)
        meter = CpuMeter(system)
        for due in DUE:
            body = orjson.dumps(job(due))
            for n in clients:
                runs.append(asyncio.run(measure(system.api_url, Run("single", due, n), body, meter,
                                                seconds=args.seconds, max_requests=None, credential=credential)))
                report(runs[-1])
        for size in batches:
            for due in DUE:
                body = orjson.dumps({"jobs": [job(due, i) for i in range(size)]})
                count = max(args.batch_clients, args.batch_jobs // size)
                runs.append(asyncio.run(measure(system.api_url, Run("batch", due, args.batch_clients, size), body,
                                                meter, seconds=3600, max_requests=count, credential=credential)))
                report(runs[-1])
    print()
    print_table(HEADER, [run.row() for run in runs])


if __name__ == "__main__":
    main()
