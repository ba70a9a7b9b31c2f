"""Benchmark: fire precision — how late chronoq's ``http`` jobs reach their webhook, and how late
Celery 5 ETA tasks on Redis doing the same work do, side by side.

    .venv/bin/python -m bench.fire --rates 200,1000,3000 --seconds 10
    .venv/bin/python -m bench.fire --rates 200 --seconds 5 --no-celery      # a quick look

For each rate R it plans N = R × S calls due evenly over S seconds and measures them on

- chronoq: a fresh system (database, broker, API, scanner, ``--executors`` executors, result
  writer, as ``chronoq up`` runs them) gets N ``http`` jobs, written ahead into the database
  (``--create db``, the default) or through the API (``--create api``: ``POST /api/jobs/batch``,
  else concurrent ``POST /api/jobs``), the first one ``--lead`` s (80) ahead: beyond the
  scanner's horizon, so the scanner dispatches them and the executors hold them before they are
  due. Each job has a 30 s timeout, no retry and no misfire grace (a late job still fires);
- Celery: a fresh prefork worker (``--celery-concurrency``, default the number of cores) on its
  own Redis queue gets N ``apply_async(eta=...)`` tasks that POST the same body through a
  keep-alive session, the first one ``--celery-lead`` s (30, plus submission time) ahead;

and each call POSTs ``{"b": run, "i": index, "t": planned ns}`` to one receiver
(:mod:`bench.receiver`, its own process), which notes the arrival time. Lateness = arrival −
planned time. Per rate and system it prints created, fired (jobs that arrived), missing,
duplicates (arrivals beyond the first), early (first arrival before its time), lateness
p50/p95/p99/max in ms of the first arrivals, the CPU the executors (Celery: the worker and its
pool) spent per job while the jobs fired, and the cores other processes on the machine used
meanwhile (near 0: the run had the machine to itself); then the ratio of the p99s. Needs
PostgreSQL on 127.0.0.1:5432 (trust auth; ``BENCH_POSTGRES_URL``) and Redis
(``BENCH_CELERY_BROKER``). docs/performance.md explains the method."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import requests
import sqlalchemy as sa

from bench.benchlib import print_table
from bench.lateness import HEADERS, Summary, ms, percentile, plan, summarize
from bench.receiver import ReceiverProcess
from bench.system import BenchSystem, CpuMeter, exit_on_sigterm, insert_jobs, job_row, pids_named, utc_from_ns
from common.core.models import Job

JOB_TIMEOUT = 30.0


def wait_arrivals(receiver: ReceiverProcess, run: str, planned: list[int], margin: float,
                  label: str, check: Callable[[], None], cpu: CpuMeter) -> None:
    """Until every call arrived (and 2 s more, for duplicates) or ``margin`` s after the last
    one was due; prints progress every 5 s. The CPU meter starts 1 s before the first is due:
    what a process spends idling through the lead is not the jobs' cost."""
    last_due = planned[-1] / 1e9
    shown = 0.0
    while True:
        check()
        now = time.time()
        if now >= planned[0] / 1e9 - 1:
            cpu.mark()
        arrived = receiver.count(run)
        if (arrived >= len(planned) and now >= last_due + 2) or now >= last_due + margin:
            return
        if now - shown >= 5:
            until = planned[0] / 1e9 - now
            when = f"first due in {until:.0f}s" if until > 0 else f"last due in {max(0.0, last_due - now):.0f}s"
            print(f"    {label}: {arrived:,}/{len(planned):,} arrived, {when}", flush=True)
            shown = now
        time.sleep(0.5)


def bodies(run: str, planned: list[int]) -> list[dict[str, Any]]:
    return [{"b": run, "i": i, "t": t} for i, t in enumerate(planned)]


def create_via_api(base: str, jobs: list[dict[str, Any]]) -> str:
    """Create the jobs through the API: the batch endpoint when there is one, else concurrent
    single creates. Returns which way it went."""
    with requests.Session() as session:
        for start in range(0, len(jobs), 1000):
            response = session.post(f"{base}/api/jobs/batch", json={"jobs": jobs[start:start + 1000]}, timeout=120)
            if start == 0 and response.status_code in (404, 405):
                break  # no batch endpoint in this build
            response.raise_for_status()
            failed = response.json().get("failed", 0)
            if failed:
                item = next(i for i in response.json()["items"] if i["code"] not in (200, 201))
                raise RuntimeError(f"POST /api/jobs/batch refused {failed} jobs, e.g. {item}")
        else:
            return "created through POST /api/jobs/batch"

    mine = threading.local()  # one keep-alive session per client thread

    def one(job: dict[str, Any]) -> None:
        if not hasattr(mine, "session"):
            mine.session = requests.Session()
        response = mine.session.post(f"{base}/api/jobs", json=job, timeout=60)
        if response.status_code != 201:
            raise RuntimeError(f"POST /api/jobs: {response.status_code} {response.text[:300]}")

    with ThreadPoolExecutor(16) as pool:
        for n, _ in enumerate(pool.map(one, jobs), 1):
            if n % 5000 == 0:
                print(f"    created {n:,} jobs through the API", flush=True)
    return "created through POST /api/jobs"


def run_chronoq(receiver: ReceiverProcess, rate: float, args: argparse.Namespace) -> Summary:
    """One rate on a fresh chronoq system."""
    run = f"chronoq-{rate:g}-{uuid.uuid4().hex[:6]}"
    url = f"{receiver.url}/hit"
    print(f"  chronoq {rate:g}/s: starting a system with {args.executors} executor(s)", flush=True)
    with BenchSystem(executors=args.executors, keep_logs=args.keep_logs, http_allowed_hosts=("127.0.0.1",)) as system:
        system.warm_up()
        cpu = CpuMeter([s.pid for s in system.executor_services()], engine=system.engine)
        planned = plan(rate, args.seconds, args.lead)
        if args.create == "db":
            rows = (job_row(run, "http", {"url": url, "json": body}, utc_from_ns(body["t"]), timeout_seconds=JOB_TIMEOUT)
                    for body in bodies(run, planned))
            insert_jobs(system.engine, rows)
            how = "inserted into the database"
        else:
            how = create_via_api(system.api_url, [
                {"name": run, "type": "http", "execute_at": utc_from_ns(body["t"]).isoformat(),
                 "payload": {"url": url, "json": body}, "max_retries": 0, "timeout_seconds": JOB_TIMEOUT}
                for body in bodies(run, planned)
            ])
        ahead = planned[0] / 1e9 - time.time()
        print(f"  chronoq {rate:g}/s: {len(planned):,} jobs {how}; the first is due in {ahead:.0f}s", flush=True)
        if ahead < 10:
            print("  WARNING: creating the jobs took most of the lead; raise --lead", flush=True)
        wait_arrivals(receiver, run, planned, args.margin, f"chronoq {rate:g}/s", system.check_alive, cpu)
        records = receiver.records(run)
        summary = summarize("chronoq", rate, planned, ((r[1], r[0]) for r in records))
        summary.cpu_ms_per_job, summary.other = cpu.per_job_ms(len(planned)), cpu.other_cores()
        summary.note = _start_to_arrival(system, run, records)
    receiver.forget(run)
    return summary


def _start_to_arrival(system: BenchSystem, run: str, records: list[tuple[Any, ...]]) -> str:
    """How long after its recorded start (jobs.started_at, of finished jobs: the real start is
    sure only once the end is reported) each call arrived, and the jobs' statuses: what the
    throughput benchmark's database-only lateness leaves out."""
    with system.engine.connect() as conn:
        rows = conn.execute(sa.select(Job.id, Job.started_at, Job.status).where(Job.name == run)).all()
    started = {str(r.id): r.started_at.timestamp() * 1e9 for r in rows
               if r.started_at is not None and r.status in ("SUCCESS", "FAILED")}
    gaps = sorted((arrived - started[job]) / 1e6 for arrived, _i, _t, job in records if job in started)
    statuses = Counter(r.status for r in rows)
    text = f"started_at→arrival p50 {ms(percentile(gaps, 0.5))} ms, p99 {ms(percentile(gaps, 0.99))} ms"
    if set(statuses) != {"SUCCESS"}:
        text += "; statuses " + ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items()))
    return text


def run_celery(receiver: ReceiverProcess, rate: float, args: argparse.Namespace, log_dir: Path) -> Summary:
    """One rate on a fresh Celery worker."""
    from bench.celery_side import CeleryWorker, send_now, submit  # Celery only when it is measured

    run = f"celery-{rate:g}-{uuid.uuid4().hex[:6]}"
    url = f"{receiver.url}/hit"
    print(f"  celery  {rate:g}/s: starting a prefork worker, concurrency {args.celery_concurrency}", flush=True)
    worker = CeleryWorker(args.celery_concurrency, log_dir / f"celery-{rate:g}.log").start()
    try:
        warm = f"{run}-warm-up"
        send_now(url, [{"b": warm, "i": i} for i in range(4 * args.celery_concurrency)], worker.queue)
        deadline = time.monotonic() + 60
        while receiver.count(warm) < 4 * args.celery_concurrency:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker ran no warm-up task within 60 s")
            time.sleep(0.2)
        receiver.forget(warm)
        cpu = CpuMeter([worker.pid], also_ours=pids_named("redis-server"))
        # Submission runs at a few thousand tasks a second: it goes into the lead.
        planned = plan(rate, args.seconds, args.celery_lead + rate * args.seconds / 2000)
        submit(url, bodies(run, planned), [utc_from_ns(t) for t in planned], worker.queue)
        ahead = planned[0] / 1e9 - time.time()
        print(f"  celery  {rate:g}/s: {len(planned):,} tasks submitted; the first is due in {ahead:.0f}s", flush=True)
        wait_arrivals(receiver, run, planned, args.margin, f"celery  {rate:g}/s", worker.check_alive, cpu)
        summary = summarize("celery", rate, planned, ((r[1], r[0]) for r in receiver.records(run)))
        summary.cpu_ms_per_job, summary.other = cpu.per_job_ms(len(planned)), cpu.other_cores()
    finally:
        worker.stop()
    receiver.forget(run)
    return summary


def print_results(results: list[tuple[Summary, Summary | None]]) -> None:
    print("\nFire precision (lateness = arrival at the receiver − planned time)")
    rows = [s.row() for pair in results for s in pair if s is not None]
    print_table(HEADERS, rows)
    for chronoq, _ in results:
        print(f"  chronoq {chronoq.rate:,.0f}/s: {chronoq.note}")
    pairs = [(c, k) for c, k in results if k is not None]
    if pairs:
        print("\np99 lateness, Celery / chronoq (above 1: chronoq is tighter)")
        print_table(["rate/s", "chronoq p99 ms", "celery p99 ms", "celery/chronoq"], [
            [f"{c.rate:,.0f}", ms(c.p(0.99)), ms(k.p(0.99)),
             f"{k.p(0.99) / c.p(0.99):.3g}" if c.p(0.99) > 0 else "-"]
            for c, k in pairs
        ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,1000,3000", help="jobs per second, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds the due times of one rate span")
    parser.add_argument("--executors", type=int, default=1, help="chronoq executor processes")
    parser.add_argument("--create", choices=("db", "api"), default="db", help="how chronoq's jobs are created")
    parser.add_argument("--lead", type=float, default=80.0, help="seconds from creation to chronoq's first due job")
    parser.add_argument("--celery-lead", type=float, default=30.0,
                        help="seconds from submission to Celery's first due task (plus an allowance for submitting)")
    parser.add_argument("--celery-concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-celery", action="store_true", help="measure chronoq only")
    parser.add_argument("--margin", type=float, default=20.0, help="seconds to wait for stragglers after the last due time")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    args = parser.parse_args()
    exit_on_sigterm()
    rates = [float(r) for r in args.rates.split(",") if r]

    log_dir = Path(tempfile.mkdtemp(prefix="chronoq-bench-fire-"))
    receiver = ReceiverProcess().start()
    results: list[tuple[Summary, Summary | None]] = []
    failed = True
    try:
        print(f"receiver on {receiver.url}; rates {args.rates}/s over {args.seconds:g}s each", flush=True)
        for rate in rates:
            chronoq = run_chronoq(receiver, rate, args)
            print_table(HEADERS, [chronoq.row()])
            celery = None if args.no_celery else run_celery(receiver, rate, args, log_dir)
            if celery is not None:
                print_table(HEADERS, [celery.row()])
            results.append((chronoq, celery))
        failed = False
    finally:
        receiver.stop()
        if results:
            print_results(results)
        if failed or args.keep_logs:
            print(f"Celery worker logs in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
