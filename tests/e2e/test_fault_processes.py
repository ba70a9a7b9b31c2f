"""Process faults, end to end: the four services run as processes over the real PostgreSQL and
tansu, and each test breaks one of them the way production would (SIGKILL = a crash, SIGTERM =
a deploy). Each test checks the invariants (docs/architecture.md, section 3) that the fault threatens
— no job lost, no double start, on time (or late by a bound the settings justify), updates
idempotent — and prints its figures (``pytest -s`` shows them).

The e2e settings (tests/e2e/conftest.py): lease 6 s, sweep 1 s, scan window 2 s, consumer
session timeout 6 s (a tansu group join then takes ~3-5 s), 3 partitions per topic.

Waits are for conditions, with bounds made for a loaded 2-core machine; a lateness bound is one
the settings justify (a lease, a session timeout, a group join, a scan window), never an idle
machine's figure."""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Iterable

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from common.core.messages import decode_dispatch
from common.core.models import Job, JobAttempt
from common.core.windows import needs_direct_dispatch
from tests.e2e.conftest import attempts, create, job
from tests.helpers import read_to_end, wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}
#: A tansu consumer-group join: ~3-5 s on an idle machine, 15 s and more on a loaded 2-core one.
JOIN_SECONDS = 15.0


# ---------------------------------------------------------------------------------------------
# Helpers (kept here: the shared test infrastructure is not ours to change)


def create_many(system: System, bodies: list[dict[str, Any]], workers: int = 8) -> list[dict]:
    """POST every body (in parallel, order kept); each must answer 201."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda body: create(system, **body), bodies))


def db_jobs(settings: Settings, ids: Iterable[str | uuid.UUID]) -> dict[str, Job]:
    """The jobs' rows, read in one transaction, by id string."""
    wanted = [uuid.UUID(str(i)) for i in ids]
    with session_scope(settings) as session:
        rows = list(session.scalars(select(Job).where(Job.id.in_(wanted))))
        for row in rows:
            session.expunge(row)
    return {str(row.id): row for row in rows}


def db_history(settings: Settings, ids: Iterable[str | uuid.UUID]) -> dict[str, list[JobAttempt]]:
    """Each job's attempt rows, ordered by attempt (and row id, so a duplicate row shows)."""
    wanted = [uuid.UUID(str(i)) for i in ids]
    history: dict[str, list[JobAttempt]] = {str(i): [] for i in wanted}
    with session_scope(settings) as session:
        for row in session.scalars(
            select(JobAttempt).where(JobAttempt.job_id.in_(wanted)).order_by(JobAttempt.attempt, JobAttempt.id)
        ):
            session.expunge(row)
            history[str(row.job_id)].append(row)
    return history


def statuses(settings: Settings, ids: Iterable[str]) -> Counter:
    return Counter(row.status for row in db_jobs(settings, ids).values())


def wait_statuses(settings: Settings, ids: list[str], wanted: set[str], timeout: float, what: str) -> None:
    """Wait until every job's status is in ``wanted``; the failure names what was left."""
    try:
        wait_for(lambda: set(statuses(settings, ids)) <= wanted, timeout=timeout, interval=0.25, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses now {dict(statuses(settings, ids))}") from None


def settle_executors(system: System, names: list[str], timeout: float = 60.0) -> None:
    """Run noop jobs until each named executor ran at least one: every one of them is a member
    of the group with partitions, so the group's join rebalance is over."""
    pids = {f":{system.services[n].process.pid}": n for n in names}  # executor id = host:pid
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while seen != set(names):
        assert time.monotonic() < deadline, f"executors {sorted(set(names) - seen)} got no partitions in {timeout}s"
        batch = create_many(system, [dict(name="settle", type="noop", delay_seconds=0) for _ in range(6)])
        ids = [j["id"] for j in batch]
        wait_statuses(system.settings, ids, {"SUCCESS"}, timeout=30, what="settle jobs")
        for row in db_jobs(system.settings, ids).values():
            seen.update(n for suffix, n in pids.items() if (row.executor or "").endswith(suffix))


def executor_name(system: System, executor_id: str) -> str:
    """The service name of the executor process whose id (host:pid) is ``executor_id``."""
    for name, service in system.services.items():
        if name.startswith("executor") and service.process and executor_id.endswith(f":{service.process.pid}"):
            return name
    raise AssertionError(f"no running executor has id {executor_id}")


def lateness_ms(receiver: Receiver, jobs: list[dict]) -> dict[str, float]:
    """Per job id: how late its (first) call reached the receiver, in ms (never negative)."""
    due = {j["id"]: datetime.fromisoformat(j["execute_at"]) for j in jobs}
    late: dict[str, float] = {}
    for call in receiver.snapshot():
        job_id = (call.key or "").split(":")[0]
        if job_id in due and job_id not in late:
            late[job_id] = (call.arrived - due[job_id]).total_seconds() * 1000
    for job_id, ms in late.items():
        assert ms >= 0, f"job {job_id} was called {-ms:.1f} ms before its time"
    return late


def calls_by_key(receiver: Receiver, jobs: list[dict]) -> Counter:
    ids = {j["id"] for j in jobs}
    return Counter(c.key for c in receiver.snapshot() if c.key and c.key.split(":")[0] in ids)


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.0f} ms, p99 {p99:.0f} ms, max {ordered[-1]:.0f} ms"


def http_jobs(receiver: Receiver, tag: str, dues: list[datetime], **extra: Any) -> list[dict[str, Any]]:
    return [
        dict(name=f"{tag}-{i}", type="http", execute_at=due.isoformat(), timeout_seconds=10,
             payload={"url": f"{receiver.url}/{tag}/{i}"}, **extra)
        for i, due in enumerate(dues)
    ]


def group_caught_up(settings: Settings, group: str, topic: str) -> bool:
    """Whether ``group`` committed offsets up to the end of every partition of ``topic``
    (read without joining the group)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = consumer.end_offsets(partitions)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in partitions)
    finally:
        consumer.close(autocommit=False)


def assert_clean_log(text: str, name: str) -> None:
    bad = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, f"{name} logged errors:\n" + "\n".join(bad[:20])


# ---------------------------------------------------------------------------------------------
# 1. An executor crashes while it holds queued jobs and runs one


@pytest.mark.timeout(360)
def test_executor_sigkill_queued_and_running_jobs_recovered(make_system, receiver: Receiver) -> None:
    # A 30 s window: the http jobs are dispatched by the API itself, so they are QUEUED on the
    # executors once created (a 2 s window would queue them only 2-4 s before their time).
    system = make_system(executors=2, scan_interval_seconds=30.0)
    settings = system.settings
    settle_executors(system, ["executor1", "executor2"])

    due0 = utcnow() + timedelta(seconds=6)
    # 30 jobs keyed at random over 3 partitions: some of them sit on the victim's (all missing
    # it has a chance of (2/3)^30, not the (2/3)^20 of 20 jobs).
    hooks = create_many(system, http_jobs(receiver, "kill", [due0 + timedelta(milliseconds=33 * i) for i in range(30)]))
    sleeper = create(system, name="mid-run", type="sleep", delay_seconds=0, timeout_seconds=30,
                     max_retries=3, payload={"seconds": 5})
    running = wait_for(lambda: (j := job(system, sleeper["id"]))["status"] == "RUNNING" and j,
                       timeout=20, what="the sleep job RUNNING")
    victim = executor_name(system, running["executor"])
    ids = [h["id"] for h in hooks]
    wait_statuses(settings, ids, {"QUEUED"}, timeout=20, what="the http jobs QUEUED on the executors")

    killed_at = utcnow()
    system.kill(victim)
    ahead = (due0 - killed_at).total_seconds()
    assert ahead > 0, f"the http jobs came due {-ahead:.1f} s before the kill"

    wait_statuses(settings, ids + [sleeper["id"]], TERMINAL, timeout=75, what="every job terminal after the kill")
    rows = db_jobs(settings, ids)
    assert {r.status for r in rows.values()} == {"SUCCESS"}

    # No http job was called twice, none is missing, each on attempt 1 (it never started before).
    keys = calls_by_key(receiver, hooks)
    assert receiver.double_starts() == {}
    assert set(keys) == {f"{i}:1" for i in ids}

    late = lateness_ms(receiver, hooks)
    redispatched = [i for i, r in rows.items() if r.dispatch_token > 1]
    # A job queued on the dead executor waits for its lease (due + lease) and the next sweep,
    # then for its partition: the dead member is evicted once the session timeout (counted from
    # the kill, which came before the due time) ran out, and the survivor's join takes ~3-5 s
    # (JOIN_SECONDS on a loaded machine).
    bound_ms = (settings.lease_seconds + settings.kafka_session_timeout_ms / 1000 + JOIN_SECONDS) * 1000
    print(f"\nexecutor SIGKILL: {victim} killed {ahead:.1f} s before the http jobs' "
          f"time; {len(redispatched)} of {len(ids)} re-dispatched after their lease; lateness {percentiles(list(late.values()))}"
          f" (bound {bound_ms:.0f} ms)")
    assert redispatched, f"no http job sat on the killed {victim} (all partitions on the survivor?)"
    assert max(late.values()) < bound_ms
    on_survivor = [late[i] for i in ids if i not in redispatched]
    print(f"executor SIGKILL: jobs on the survivor {percentiles(on_survivor)}; "
          f"re-dispatched {percentiles([late[i] for i in redispatched])}")

    # The attempt that was running on the dead executor is marked lost; a later one succeeded.
    final = job(system, sleeper["id"])
    history = attempts(system, sleeper["id"])
    print(f"executor SIGKILL: the mid-run job ended {final['status']} after {final['attempts']} attempts: "
          + ", ".join(f"{a['attempt']} {a['status']} {(a['error'] or '')[:40]!r}" for a in history))
    assert final["status"] == "SUCCESS"
    assert history[0]["attempt"] == 1 and history[0]["status"] == "FAILED"
    assert "lost" in (history[0]["error"] or "")
    assert history[-1]["status"] == "SUCCESS" and history[-1]["attempt"] == final["attempts"] >= 2
    assert [a["attempt"] for a in history] == list(range(1, final["attempts"] + 1))


# ---------------------------------------------------------------------------------------------
# 2. SIGTERM hands the waiting jobs back at once


@pytest.mark.timeout(360)
def test_executor_sigterm_hands_back_and_others_fire_on_time(make_system, receiver: Receiver) -> None:
    # A 30 s window: jobs 12-15 s ahead are dispatched at once (by the API itself), so they wait
    # on the executors well before their time.
    system = make_system(executors=2, scan_interval_seconds=30.0)
    settings = system.settings
    settle_executors(system, ["executor1", "executor2"])

    start = utcnow()
    dues = [start + timedelta(seconds=12, milliseconds=100 * i) for i in range(30)]  # 30: some on executor1
    hooks = create_many(system, http_jobs(receiver, "term", dues))
    ids = [h["id"] for h in hooks]
    wait_statuses(settings, ids, {"QUEUED"}, timeout=30, what="the jobs QUEUED on the executors")

    stopped_at = utcnow()
    code = system.services["executor1"].stop()  # SIGTERM, waits for the exit
    stop_took = (utcnow() - stopped_at).total_seconds()
    log = system.services["executor1"].log()
    assert code == 0, f"executor1 exited with {code}:\n{log[-3000:]}"
    match = re.search(r"handed back (\d+) jobs", log)
    assert match, f"executor1 did not say what it handed back:\n{log[-3000:]}"
    handed = int(match.group(1))
    ahead = (dues[0] - utcnow()).total_seconds()
    assert ahead > 0, f"executor1 stopped only {-ahead:.1f} s after the jobs' time"

    wait_statuses(settings, ids, {"SUCCESS"}, timeout=60, what="every job SUCCESS")
    rows = db_jobs(settings, ids)
    late = lateness_ms(receiver, hooks)
    assert receiver.double_starts() == {}
    assert set(calls_by_key(receiver, hooks)) == {f"{i}:1" for i in ids}
    redispatched = [i for i, r in rows.items() if r.dispatch_token > 1]
    print(f"\nexecutor SIGTERM: stopped in {stop_took:.1f} s, {ahead:.1f} s before the jobs' time; "
          f"handed back {handed} of {len(ids)} jobs "
          f"({len(redispatched)} re-dispatched); lateness {percentiles(list(late.values()))}; "
          f"handed-back ones {percentiles([late[i] for i in redispatched])}")
    assert handed >= 1, "executor1 held none of the jobs"
    assert len(redispatched) == handed, "every handed-back job is dispatched again, and only those"
    survivor = system.services["executor2"].process.pid
    assert all((rows[i].executor or "").endswith(f":{survivor}") for i in redispatched)
    # Handed back at once: fired by the other executor once the group's rebalance is over (well
    # before the jobs' time, unless the machine is very slow), not after a lease: a job that was
    # not handed back is dispatched again only when its lease ran out, at due + lease.
    assert max(late.values()) < settings.lease_seconds * 1000


# ---------------------------------------------------------------------------------------------
# 3. Members join and leave while jobs fire


@pytest.mark.timeout(420)
def test_rebalance_under_load_every_job_once(make_system, receiver: Receiver) -> None:
    system = make_system(executors=2)
    settings = system.settings
    settle_executors(system, ["executor1", "executor2"])

    t0 = time.monotonic()
    base = utcnow() + timedelta(seconds=3)
    hooks = create_many(system, http_jobs(receiver, "load", [base + timedelta(milliseconds=66 * i) for i in range(150)]))
    ids = [h["id"] for h in hooks]
    created_in = time.monotonic() - t0

    # The scenario's moments, not waits for something: a member joins 3 s in, while the jobs
    # fire, and another leaves 3 s later (later still if creating the jobs took longer).
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    system.add("executor3")
    pids = executor_pids(system)
    time.sleep(max(0.0, 6.0 - (time.monotonic() - t0)))
    code = system.services["executor1"].stop()
    log = system.services["executor1"].log()
    assert code == 0, f"executor1 exited with {code}:\n{log[-3000:]}"
    handed = int(m.group(1)) if (m := re.search(r"handed back (\d+) jobs", log)) else -1

    wait_statuses(settings, ids, {"SUCCESS"}, timeout=120, what="all 150 jobs SUCCESS")
    rows = db_jobs(settings, ids)
    keys = calls_by_key(receiver, hooks)
    assert receiver.double_starts() == {}, "an attempt was called twice"
    assert set(keys) == {f"{i}:1" for i in ids}, "a job is missing or ran on a later attempt"
    assert all(n == 1 for n in keys.values())
    late = lateness_ms(receiver, hooks)
    by_executor = Counter(name_of(pids, r.executor) for r in rows.values())
    print(f"\nrebalance under load: 150 jobs created in {created_in:.1f} s, executor3 added at 3 s, executor1 "
          f"SIGTERMed at 6 s (handed back {handed}); ran on {dict(sorted(by_executor.items()))}; "
          f"lateness {percentiles(list(late.values()))}; "
          f"{sum(1 for r in rows.values() if r.dispatch_token > 1)} re-dispatched")
    # Messages wait while the group rebalances: executor3's join and executor1's leave (~3 s
    # each, JOIN_SECONDS on a loaded machine), and when the member that left was the elected
    # leader, one failed sync (a session timeout) too; a job whose lease ran out meanwhile is
    # dispatched again (token 2; the CAS keeps its first message from starting it).
    bound_ms = (settings.lease_seconds + settings.kafka_session_timeout_ms / 1000 + 2 * JOIN_SECONDS) * 1000
    assert max(late.values()) < bound_ms
    if not by_executor.get("executor3"):
        # Its join outlasted the jobs (a slow machine): it must still get partitions.
        print("rebalance under load: executor3 ran none of the 150 jobs; settling it")
        settle_executors(system, ["executor3"])


def executor_pids(system: System) -> dict[int, str]:
    """pid -> service name of the executors running now (recorded before one is stopped)."""
    return {s.process.pid: n for n, s in system.services.items() if n.startswith("executor") and s.process}


def name_of(pids: dict[int, str], executor_id: str | None) -> str:
    pid = int((executor_id or ":0").rsplit(":", 1)[1])
    return pids.get(pid, executor_id or "?")


# ---------------------------------------------------------------------------------------------
# 4. Two scanners race, and one of them crashes


@pytest.mark.timeout(330)
def test_two_scanners_one_killed_no_double_dispatch(make_system, receiver: Receiver) -> None:
    system = make_system(executors=1, scanners=2, scan_interval_seconds=2.0)
    settings = system.settings
    interval = settings.scan_interval_seconds

    t0 = time.monotonic()
    start = utcnow()
    dues = [start + timedelta(seconds=6, milliseconds=45 * i) for i in range(200)]  # 6-15 s ahead
    hooks = create_many(system, http_jobs(receiver, "scan", dues))
    ids = [h["id"] for h in hooks]
    # Each one beyond the API's direct-dispatch horizon when it was created (the API decides
    # at created_at): the scanners dispatch every one of them.
    direct = [h["id"] for h in hooks if needs_direct_dispatch(
        datetime.fromisoformat(h["execute_at"]), datetime.fromisoformat(h["created_at"]), interval)]
    assert not direct, f"{len(direct)} jobs were dispatched by the API (their creation was slow)"
    # The scenario's moment, not a wait for something: scanner1 dies midway through the dues.
    time.sleep(max(0.0, 10.0 - (time.monotonic() - t0)))
    before = statuses(settings, ids)
    system.kill("scanner1")
    scanner1_log = system.services["scanner1"].log()

    wait_statuses(settings, ids, {"SUCCESS"}, timeout=90, what="all 200 jobs SUCCESS")
    rows = db_jobs(settings, ids)
    assert receiver.double_starts() == {}
    assert set(calls_by_key(receiver, hooks)) == {f"{i}:1" for i in ids}

    # Every dispatch the scanners published, by job: exactly one per job, with the job's token.
    records = read_to_end(settings.kafka_bootstrap, settings.topic_jobs)
    published: dict[str, list[int]] = {}
    for record in records:
        message = decode_dispatch(record.value)
        published.setdefault(str(message.job_id), []).append(message.token)
    doubled = {i: published.get(i) for i in ids if len(published.get(i, [])) != 1}
    assert not doubled, f"jobs dispatched more (or less) than once: {doubled}"
    # Token 1 everywhere, except a job whose claim scanner1 committed but never published (it
    # died in between): the lease gave it token 2 — still one published dispatch.
    lost_with_kill = [i for i in ids if rows[i].dispatch_token != 1]
    assert all(rows[i].dispatch_token == 2 and published[i] == [2] for i in lost_with_kill), \
        {i: (rows[i].dispatch_token, published[i]) for i in lost_with_kill}
    assert all(published[i] == [rows[i].dispatch_token] for i in ids)

    def dispatched(log: str) -> int:
        return sum(int(n) for n in re.findall(r"dispatched (\d+) jobs", log))

    late = lateness_ms(receiver, hooks)
    print(f"\ntwo scanners: 200 jobs 6-15 s ahead; before the kill of scanner1 {dict(before)}; scanner1 "
          f"dispatched {dispatched(scanner1_log)}, scanner2 {dispatched(system.services['scanner2'].log())}; "
          f"dispatch tokens {dict(Counter(r.dispatch_token for r in rows.values()))} "
          f"({len(lost_with_kill)} lost with the kill); lateness {percentiles(list(late.values()))}")
    assert len(lost_with_kill) <= settings.scan_batch_size
    # On time: within one scan window (the scanners dispatch 1-2 windows ahead); a job the
    # crash held up would wait for its lease.
    on_time = [late[i] for i in ids if i not in lost_with_kill]
    assert max(on_time) < interval * 1000, "a scanner's crash must not delay what the other one dispatches"


# ---------------------------------------------------------------------------------------------
# 5. The result writer crashes in the middle of a batch


@pytest.mark.timeout(360)
def test_result_writer_sigkill_replays_without_harm(make_system, receiver: Receiver) -> None:
    system = make_system(executors=1)
    settings = system.settings
    base = utcnow() + timedelta(seconds=4)
    hooks = create_many(system, http_jobs(receiver, "res", [base + timedelta(milliseconds=30 * i) for i in range(100)]))
    ids = [h["id"] for h in hooks]

    # Kill the writer once about a third of the jobs finished, while the rest are finishing.
    wait_for(lambda: statuses(settings, ids)["SUCCESS"] >= 30, timeout=60, interval=0.02, what="30 jobs done")
    at_kill = statuses(settings, ids)
    system.kill("results")
    system.restart("results")

    wait_statuses(settings, ids, {"SUCCESS"}, timeout=60, what="all 100 jobs SUCCESS")
    # The restarted writer rejoins its group and works through everything that was not
    # committed, applying again what the killed one had applied.
    wait_for(lambda: group_caught_up(settings, settings.results_group, settings.topic_updates),
             timeout=90, interval=0.5, what="the restarted result writer caught up")

    rows = db_jobs(settings, ids)
    history = db_history(settings, ids)
    for job_id in ids:
        row, rows_of_job = rows[job_id], history[job_id]
        assert row.status == "SUCCESS" and row.attempts == 1 and row.finished_at is not None, job_id
        assert [(a.attempt, a.status) for a in rows_of_job] == [(1, "SUCCESS")], (job_id, rows_of_job)
        attempt = rows_of_job[0]
        assert attempt.dispatch_token == row.dispatch_token
        assert attempt.executor == row.executor and attempt.executor
        assert attempt.started_at is not None and attempt.finished_at is not None
        assert attempt.started_at <= attempt.finished_at
        assert attempt.error is None and row.error is None
        assert attempt.output == row.output and row.output is not None
    assert receiver.double_starts() == {}

    log = system.services["results"].log()
    starts = log.count("result writer started")
    assert starts == 2, f"the result writer started {starts} times:\n{log[-3000:]}"
    assert_clean_log(log, "results")
    moved = re.findall(r"(\d+) updates moved a job forward", log)
    print(f"\nresult writer SIGKILL: killed with {dict(at_kill)} of 100 jobs; after the restart every job "
          f"SUCCESS with exactly one attempt row; results log: started {starts} times, no errors"
          + (f"; reported moved {moved}" if moved else ""))
