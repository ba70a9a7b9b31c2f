"""Benchmark: sustained throughput — the highest rate of ``noop`` jobs chronoq fires with p99
lateness under 100 ms for 60 s, with 1 and 2 executor processes.

    .venv/bin/python -m bench.throughput                                   # the full search
    .venv/bin/python -m bench.throughput --executors 1 --rates 100,200 --seconds 10 --refine 0

A trial at rate R: a fresh system (database, broker, API, scanner, N executors, result writer;
the settings of ``chronoq up``) gets R × S ``noop`` jobs due evenly over S seconds
(``--seconds``, 60), written ahead into the database, the first one ``--lead`` s (75, plus time
to insert them) ahead, so the scanner dispatches them while earlier ones fire, as it does in a
steady state. Lateness comes from the database: ``jobs.started_at − jobs.execute_at`` of
finished jobs. ``started_at`` is read only once the job is final, because only the attempt's
end report is sure to carry the real start: an executor that claims ahead of the due time
stamps the planned start with the claim, and its end report overwrites it with the real one. The
real start is when the executor began the fire, just before the handler; for ``noop`` nothing
follows but the success report (``bench.fire`` shows how far an ``http`` call's arrival trails
it). A start before ``execute_at`` is counted as early, and should not happen. A job not
finished ``--drain`` s after the last due time counts as infinitely late, so more than 1 %
missing fails the trial. A trial passes when that p99 is under ``--target-ms`` (100).

The search climbs ``--rates`` until a trial fails, then bisects ``--refine`` times between the
best pass and the first failure. It prints, per executor count, a row per trial and the
highest sustained rate. Needs PostgreSQL on 127.0.0.1:5432 (trust auth)."""

from __future__ import annotations

import argparse
import math
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from bench.benchlib import print_table
from bench.lateness import ms, percentile, plan
from bench.system import BenchSystem, CpuMeter, exit_on_sigterm, insert_jobs, job_row, utc_from_ns
from common.core.models import Job

FINAL = ("SUCCESS", "FAILED", "CANCELLED")

INSERT_RATE = 15000.0  # rows a second the database takes here, roughly; it goes into the lead


@dataclass
class Trial:
    """One rate on one system."""

    executors: int
    rate: float
    created: int
    late_ms: list[float]
    early: int
    reruns: int
    cpu_ms_per_job: float
    other: float

    @property
    def finished(self) -> int:
        return len(self.late_ms)

    @property
    def missing(self) -> int:
        return self.created - self.finished

    def p(self, q: float) -> float:
        """Percentile over every created job, a missing one counting as infinitely late."""
        return percentile(self.late_ms + [math.inf] * self.missing, q)

    def passed(self, target_ms: float) -> bool:
        return self.p(0.99) < target_ms

    def row(self, target_ms: float) -> list[str]:
        return [
            f"{self.rate:,.0f}", f"{self.created:,}", f"{self.finished:,}", f"{self.missing:,}", f"{self.early:,}",
            f"{self.reruns:,}",
            *(_ms(self.p(q)) for q in (0.5, 0.95, 0.99)), _ms(self.late_ms[-1] if self.late_ms else math.nan),
            ms(self.cpu_ms_per_job, 2), ms(self.other, 2), "pass" if self.passed(target_ms) else "FAIL",
        ]


HEADERS = ["rate/s", "created", "finished", "missing", "early", "re-runs", "p50 ms", "p95 ms", "p99 ms", "max ms",
           "CPU ms/job", "other cores", "verdict"]


def _ms(value: float) -> str:
    return "never" if value == math.inf else ms(value)


def trial(executors: int, rate: float, args: argparse.Namespace) -> Trial:
    """Run one rate on a fresh system and read the lateness back from the database."""
    tag = f"tp-{rate:g}-{uuid.uuid4().hex[:6]}"
    count = int(round(rate * args.seconds))
    print(f"  {executors} executor(s), {rate:g}/s: starting a system for {count:,} jobs", flush=True)
    with BenchSystem(executors=executors, keep_logs=args.keep_logs) as system:
        system.warm_up()
        cpu = CpuMeter([s.pid for s in system.executor_services()], engine=system.engine)
        planned = plan(rate, args.seconds, args.lead + count / INSERT_RATE)
        insert_jobs(system.engine, (job_row(tag, "noop", {}, utc_from_ns(t)) for t in planned))
        ahead = planned[0] / 1e9 - time.time()
        print(f"  {executors} executor(s), {rate:g}/s: jobs in; the first is due in {ahead:.0f}s", flush=True)
        if ahead < 10:
            print("  WARNING: inserting the jobs took most of the lead; raise --lead", flush=True)
        _wait_finished(system, tag, count, planned, args.drain, cpu)
        cpu_ms, other = cpu.per_job_ms(count), cpu.other_cores()
        with system.engine.connect() as conn:
            late = conn.scalars(
                sa.select(sa.extract("epoch", Job.started_at - Job.execute_at) * 1000)
                .where(Job.name == tag, Job.status.in_(FINAL), Job.started_at.is_not(None))
            ).all()
            attempts = conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(Job.attempts), 0))
                .where(Job.name == tag, Job.status.in_(FINAL), Job.started_at.is_not(None))
            )
    return Trial(
        executors=executors, rate=rate, created=count, late_ms=sorted(float(v) for v in late),
        early=sum(1 for v in late if v < 0), reruns=int(attempts) - len(late), cpu_ms_per_job=cpu_ms, other=other,
    )


def _wait_finished(system: BenchSystem, tag: str, count: int, planned: list[int], drain: float,
                   cpu: CpuMeter) -> None:
    """Until every job is final (and the last one is due), or ``drain`` s after the last due
    time; prints progress every 5 s. The CPU meter starts 1 s before the first job is due."""
    first_due, last_due = planned[0] / 1e9, planned[-1] / 1e9
    while True:
        if time.time() >= first_due - 1:
            cpu.mark()
        system.check_alive()
        with system.engine.connect() as conn:
            open_ = conn.scalar(sa.select(sa.func.count()).where(Job.name == tag, Job.status.not_in(FINAL)))
        now = time.time()
        if (open_ == 0 and now >= last_due) or now >= last_due + drain:
            return
        until = planned[0] / 1e9 - now
        when = f"first due in {until:.0f}s" if until > 0 else f"last due in {max(0.0, last_due - now):.0f}s"
        print(f"    {count - open_:,}/{count:,} finished, {when}", flush=True)
        time.sleep(min(5.0, max(0.2, first_due - 1 - time.time())) if cpu.start is None else 5.0)


def search(executors: int, args: argparse.Namespace) -> list[Trial]:
    """Climb the ladder to the first failure, then bisect between the best pass and it."""
    trials: list[Trial] = []

    def run(rate: float) -> bool:
        result = trial(executors, rate, args)
        trials.append(result)
        print_table(HEADERS, [result.row(args.target_ms)])
        return result.passed(args.target_ms)

    best, worst = 0.0, math.inf
    for rate in [float(r) for r in args.rates.split(",") if r]:
        if run(rate):
            best = rate
        else:
            worst = rate
            break
    for _ in range(args.refine if worst != math.inf else 0):
        rate = round((best + worst) / 2 / args.step) * args.step
        if rate <= best or rate >= worst:
            break
        if run(rate):
            best = rate
        else:
            worst = rate
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executors", default="1,2", help="executor process counts, comma separated")
    parser.add_argument("--rates", default="500,1000,2000,3000,5000,8000,12000", help="the ladder, jobs per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds the due times of one trial span")
    parser.add_argument("--lead", type=float, default=75.0, help="seconds from the last insert to the first due job")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds after the last due time a job may still start")
    parser.add_argument("--target-ms", type=float, default=100.0, help="the p99 lateness a trial must stay under")
    parser.add_argument("--refine", type=int, default=3, help="bisection steps after the first failure")
    parser.add_argument("--step", type=float, default=50.0, help="bisected rates are multiples of this")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    args = parser.parse_args()
    exit_on_sigterm()

    results: dict[int, list[Trial]] = {}
    try:
        for executors in [int(n) for n in args.executors.split(",") if n]:
            results[executors] = search(executors, args)
    finally:
        print(f"\nSustained throughput: noop jobs over {args.seconds:g}s, lateness = started_at − execute_at, "
              f"a trial passes with p99 < {args.target_ms:g} ms (a job not finished counts as never)")
        for executors, trials in results.items():
            print(f"\n{executors} executor process(es)")
            print_table(HEADERS, [t.row(args.target_ms) for t in sorted(trials, key=lambda t: t.rate)])
            if any(t.early for t in trials):
                print("  WARNING: some jobs record a start before their execute_at: this build's started_at is "
                      "not the real start, so these figures are not lateness (bench.fire's are)")
            passed = [t.rate for t in trials if t.passed(args.target_ms)]
            print(f"  highest sustained rate: {max(passed):,.0f} jobs/s" if passed
                  else f"  no tried rate passed (lowest tried {min(t.rate for t in trials):,.0f}/s)")


if __name__ == "__main__":
    main()
