"""Fault injection on the infrastructure, over the real processes: the broker loses everything,
PostgreSQL goes away for a while, cancels race the fire, and bad messages land on both topics.

Every wait is for a condition, with a deadline made for a loaded 2-core machine; every figure
is printed (``pytest -s`` shows them) and only bounds the settings justify are asserted."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
import sqlalchemy as sa
from kafka import KafkaProducer
from sqlalchemy.engine import make_url

from common.launch.broker import LocalBroker
from common.infra.clock import utcnow
from common.core.messages import (
    DispatchMessage,
    UpdateMessage,
    encode_dispatch,
    encode_update,
)
from tests.conftest import PG_ADMIN_URL
from tests.e2e.conftest import attempts, create, job
from tests.helpers import read_to_end, wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}
#: Length of the PostgreSQL outage (FAULT_OUTAGE_SECONDS overrides it to explore the races).
OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "9"))


# --------------------------------------------------------------------------- helpers



def http_jobs(system: System, receiver: Receiver, prefix: str, n: int, first: datetime, step: timedelta) -> list[dict]:
    """``n`` http jobs to ``<receiver>/<prefix>/<i>``, the first due at ``first``, then every
    ``step``; created in parallel (order kept), so that a slow machine eats little of the time
    before they are due."""
    def one(i: int) -> dict:
        return create(system, name=f"{prefix}-{i}", type="http", execute_at=(first + step * i).isoformat(),
                      payload={"url": f"{receiver.url}/{prefix}/{i}"})

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))

def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def statuses(system: System, jobs: list[dict]) -> dict[str, str]:
    return {j["id"]: job(system, j["id"])["status"] for j in jobs}


def wait_statuses(system: System, jobs: list[dict], accept: Callable[[str], bool], timeout: float, what: str) -> None:
    def done() -> bool:
        return all(accept(s) for s in statuses(system, jobs).values())

    try:
        wait_for(done, timeout=timeout, interval=0.25, what=what)
    except AssertionError:
        print(f"\n{what}: {statuses(system, jobs)}\n{system.logs()}")
        raise


def lateness_ms(receiver: Receiver, jobs: list[dict], prefix: str) -> list[float]:
    """Arrival at the receiver minus execute_at, for the calls whose path starts with ``prefix``."""
    due = {urlparse(j["payload"]["url"]).path: parse(j["execute_at"]) for j in jobs}
    result = []
    for call in receiver.snapshot():
        if call.path.startswith(prefix) and call.path in due:
            result.append((call.arrived - due[call.path]).total_seconds() * 1000)
    return sorted(result)


def calls_to(receiver: Receiver, path: str) -> int:
    return sum(1 for p in receiver.paths() if p == path)


def all_alive(system: System) -> dict[str, int | None]:
    """Each service's exit code (None: still running)."""
    return {n: (s.process.poll() if s.process is not None else -999) for n, s in system.services.items()}


@pytest.fixture
def spare_brokers() -> Iterator[list[LocalBroker]]:
    """Brokers started by a test to replace a killed one. Listed before ``make_system`` in a
    test's arguments, so they are stopped only after the system was."""
    started: list[LocalBroker] = []
    yield started
    for broker in started:
        broker.stop()


def replace_broker(old: LocalBroker, spares: list[LocalBroker]) -> LocalBroker:
    """SIGKILL ``old`` and start an empty broker on the same port (tansu keeps memory only)."""
    old.kill()
    new = LocalBroker(port=old.port)
    spares.append(new)
    return new.start()


class DatabaseOutage:
    """Make one database refuse connections (and drop the ones it has) without stopping the
    cluster; ``end`` lets it accept connections again and is safe to call more than once."""

    def __init__(self, database_url: str) -> None:
        self.name = make_url(database_url).database
        assert self.name and self.name.startswith("chronoq_test_"), self.name
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.active = False

    def begin(self) -> None:
        self.active = True
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": self.name},
            )

    def end(self) -> None:
        if not self.active:
            return
        last: Exception | None = None
        for _ in range(20):
            try:
                with self.admin.connect() as conn:
                    conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))
                self.active = False
                return
            except sa.exc.OperationalError as exc:  # pragma: no cover - the admin database is up
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"could not allow connections to {self.name} again: {last}")

    def close(self) -> None:
        try:
            self.end()
        finally:
            self.admin.dispose()


# --------------------------------------------------------------------------- 1. broker total loss


@pytest.mark.timeout(420)
def test_broker_total_loss_recovers_jobs_and_outcomes(
    spare_brokers: list[LocalBroker], own_broker: LocalBroker, make_system: Callable[..., System], receiver: Receiver
) -> None:
    began = time.monotonic()
    system = make_system(broker_=own_broker, lease_seconds=5.0)

    # (a) jobs dispatched to a broker that then loses everything, with no executor to take them
    system.kill("executor1")
    start = utcnow() + timedelta(seconds=2.5)
    jobs = http_jobs(system, receiver, "loss", 20, start, timedelta(milliseconds=75))
    wait_statuses(system, jobs, lambda s: s == "QUEUED", 30, "all 20 dispatched (QUEUED)")
    broker = replace_broker(own_broker, spare_brokers)
    system.restart("executor1")
    wait_statuses(system, jobs, lambda s: s == "SUCCESS", 90, "all 20 SUCCESS after the broker loss")
    late_a = lateness_ms(receiver, jobs, "/loss/")
    assert len(late_a) == 20 and sorted(receiver.paths()) == sorted(f"/loss/{i}" for i in range(20))
    assert receiver.double_starts() == {}
    for j in jobs[:3]:
        history = attempts(system, j["id"])
        assert history[-1]["status"] == "SUCCESS", history
    print(f"\n(a) 20 jobs lost with the broker, recovered from the database: lateness min "
          f"{late_a[0]:.0f} ms, max {late_a[-1]:.0f} ms (lease 5 s)")

    # (b) the services reconnected by themselves: new jobs run normally
    soon = utcnow() + timedelta(seconds=1.5)
    fresh = http_jobs(system, receiver, "after", 5, soon, timedelta(milliseconds=50))
    wait_statuses(system, fresh, lambda s: s == "SUCCESS", 30, "new jobs after the broker restart")
    late_b = lateness_ms(receiver, fresh, "/after/")
    assert len(late_b) == 5 and receiver.double_starts() == {}
    print(f"(b) 5 new jobs after the restart: lateness max {late_b[-1]:.0f} ms")
    # A job whose dispatch was lost waits for its lease to run out, at due + lease.
    lease_ms = system.settings.lease_seconds * 1000
    assert late_b[-1] < lease_ms, "new jobs after a broker restart should not wait for a lease"

    # (c) outcomes whose messages are lost with the broker are still recorded (write-through)
    system.kill("results")
    soon = utcnow() + timedelta(seconds=1.5)
    written = http_jobs(system, receiver, "through", 5, soon, timedelta(milliseconds=50))
    wait_for(lambda: all(calls_to(receiver, f"/through/{i}") for i in range(5)), timeout=30, what="the 5 calls")
    wait_statuses(system, written, lambda s: s == "SUCCESS", 20, "SUCCESS written through by the executor")
    broker = replace_broker(broker, spare_brokers)
    system.restart("results")
    # Not a wait for something: the restarted result writer meets an empty log, and nothing may
    # move backwards; give a change that must not happen a moment to show.
    time.sleep(2.0)
    for j in written:
        final = job(system, j["id"])
        history = attempts(system, j["id"])
        assert final["status"] == "SUCCESS" and final["finished_at"] and final["attempts"] == 1, final
        assert [(a["attempt"], a["status"]) for a in history] == [(1, "SUCCESS")], history
        assert history[0]["finished_at"] and history[0]["executor"], history
    late_c = lateness_ms(receiver, written, "/through/")
    assert receiver.double_starts() == {}
    alive = all_alive(system)
    assert all(code is None for code in alive.values()), f"a service died: {alive}\n{system.logs()}"
    worst = max(late_a[-1], late_b[-1], late_c[-1])
    print(f"(c) 5 outcomes whose update messages were lost: SUCCESS with history; worst lateness "
          f"of the test {worst:.0f} ms; {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 2. PostgreSQL outage


@pytest.mark.timeout(360)
def test_postgres_outage_503s_then_everything_resumes(make_system: Callable[..., System], receiver: Receiver) -> None:
    began = time.monotonic()
    system = make_system(lease_seconds=6.0)
    outage = DatabaseOutage(system.settings.database_url)
    try:
        t0 = utcnow()
        # Running across the outage: 5 s sleeps that start ~1 s before it (so they end in it
        # even when setting it up is slow).
        across = [create(system, name=f"across-{i}", type="sleep", payload={"seconds": 5},
                         execute_at=(t0 + timedelta(seconds=1.5)).isoformat()) for i in range(3)]
        # Due during the outage (some already on the executor, some still SCHEDULED).
        during = http_jobs(system, receiver, "during", 10, t0 + timedelta(seconds=3.5), timedelta(milliseconds=400))
        wait_statuses(system, across, lambda s: s == "RUNNING", 30, "the sleeps RUNNING")
        outage.begin()
        outage_began = utcnow()

        timings = {}
        for what, call in (
            ("readyz", lambda: requests.get(f"{system.base_url}/readyz", timeout=10)),
            ("create", lambda: requests.post(f"{system.base_url}/api/jobs", timeout=10,
                                             json={"name": "in-outage", "type": "noop", "delay_seconds": 1})),
            ("get", lambda: requests.get(f"{system.base_url}/api/jobs/{during[0]['id']}", timeout=10)),
            ("cancel", lambda: requests.delete(f"{system.base_url}/api/jobs/{during[-1]['id']}", timeout=10)),
        ):
            for _ in range(3):  # each API worker once or more
                t = time.monotonic()
                response = call()
                elapsed = time.monotonic() - t
                timings[what] = max(timings.get(what, 0.0), elapsed)
                assert response.status_code == 503, (what, response.status_code, response.text)
                body = response.json()
                assert body["code"] == 503 and body["status"] and "database" in body["message"].lower(), body
                assert response.headers.get("Retry-After") == "5"
                # Refused at once: no request waits for the 5 s connect timeout.
                assert elapsed < 5.0, f"{what} took {elapsed:.1f}s during the outage"
        # The outage's length, not a wait for something.
        time.sleep(max(0.0, OUTAGE_SECONDS - (utcnow() - outage_began).total_seconds()))
        outage.end()
        outage_s = (utcnow() - outage_began).total_seconds()
        resumed = time.monotonic()

        wait_statuses(system, across + during, lambda s: s == "SUCCESS", 90, "every job SUCCESS after the outage")
        recovered_s = time.monotonic() - resumed
    finally:
        outage.close()

    assert requests.get(f"{system.base_url}/readyz", timeout=10).status_code == 200
    for j in during:
        history = attempts(system, j["id"])
        assert history and history[-1]["status"] == "SUCCESS", history
        assert all(a["started_at"] and a["finished_at"] for a in history), history
    reruns = 0
    for j in across:
        final = job(system, j["id"])
        history = attempts(system, j["id"])
        assert final["output"] == {"slept": 5.0}, final
        assert history[0]["attempt"] == 1 and history[0]["status"] == "SUCCESS", history  # no update lost
        assert all(a["finished_at"] for a in history), history
        reruns += len(history) - 1
    # The sleeps ended during the outage: their executor could not write SUCCESS through and
    # published it; if the scanner's first sweep after the outage comes before the result
    # writer applied it, the lease that ran out unextended during the outage makes it run
    # the job again (attempt 2, a new idempotency key) although no executor died.
    assert reruns == 0, f"{reruns} jobs that succeeded during the outage were run again after it"
    assert calls_to(receiver, "/during/0") >= 1 and receiver.double_starts() == {}
    late = lateness_ms(receiver, during, "/during/")
    assert len(late) >= 10

    logs = {name: service.log() for name, service in system.services.items()}
    assert "scan failed" in logs["scanner1"], logs["scanner1"][-3000:]
    assert logs["scanner1"].rfind("dispatched") > logs["scanner1"].rfind("scan failed"), "the scanner did not resume"
    assert "database unavailable" in logs["executor1"] or "could not extend" in logs["executor1"], logs["executor1"][-3000:]
    assert "database unavailable" in logs["results"], logs["results"][-3000:]
    assert "answering 503" in logs["api"]
    alive = all_alive(system)
    assert all(code is None for code in alive.values()), f"a service died: {alive}\n{system.logs()}"
    print(f"\nPostgreSQL outage of {outage_s:.1f} s: worst answer during it readyz {timings['readyz'] * 1000:.0f} ms, "
          f"create {timings['create'] * 1000:.0f} ms, get {timings['get'] * 1000:.0f} ms, "
          f"cancel {timings['cancel'] * 1000:.0f} ms (all 503); "
          f"13 jobs SUCCESS {recovered_s:.1f} s after it; 10 due during it late by {late[0] / 1000:.1f}-"
          f"{late[-1] / 1000:.1f} s; sleeps across it re-run {reruns} times; "
          f"{time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 3. cancel races


def delete(system: System, job_id: str) -> requests.Response:
    return requests.delete(f"{system.base_url}/api/jobs/{job_id}", timeout=10)


@pytest.mark.timeout(360)
def test_cancel_races_with_the_fire(make_system: Callable[..., System], receiver: Receiver) -> None:
    began = time.monotonic()
    # A 30 s window: every job below is dispatched by the API itself, QUEUED on the executor
    # once created (a 2 s window would queue some only 2-4 s before their time).
    system = make_system(scan_interval_seconds=30.0)

    # (a) cancelled while queued on the executor: never runs
    queued = create(system, name="cancel-queued", type="http", delay_seconds=3,
                    payload={"url": f"{receiver.url}/queued"})
    wait_for(lambda: job(system, queued["id"])["status"] == "QUEUED", timeout=30, what="QUEUED")
    response = delete(system, queued["id"])
    assert response.status_code == 200 and response.json()["status"] == "CANCELLED", response.text

    # (b) 30 jobs due at one instant T, each cancelled at T (+-15 ms)
    fire = utcnow() + timedelta(seconds=4)
    racing = http_jobs(system, receiver, "race", 30, fire, timedelta(0))
    wait_statuses(system, racing, lambda s: s == "QUEUED", 30, "all 30 QUEUED before T")
    assert utcnow() < fire - timedelta(milliseconds=300), "too slow to set up the race"

    def cancel_at(index: int) -> tuple[int, str, float]:
        moment = fire + timedelta(milliseconds=-15 + index)  # -15 ms .. +14 ms around T
        time.sleep(max(0.0, (moment - utcnow()).total_seconds()))
        sent = (utcnow() - fire).total_seconds() * 1000
        response = delete(system, racing[index]["id"])
        return response.status_code, response.text, sent

    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(cancel_at, range(30)))
    wait_statuses(system, racing, lambda s: s in TERMINAL, 60, "every racing job terminal")
    # Not a wait for something: a call that must not happen gets a moment to arrive (a call
    # that must happen came before its job's SUCCESS).
    time.sleep(1.0)

    won = lost = 0
    for index, (code, text, _) in enumerate(answers):
        final = job(system, racing[index]["id"])
        called = calls_to(receiver, f"/race/{index}")
        if code == 200:
            won += 1
            assert called == 0, f"job {index}: DELETE answered 200 but the job ran"
            assert final["status"] == "CANCELLED" and attempts(system, racing[index]["id"]) == [], final
        elif code == 409:
            lost += 1
            assert called == 1, f"job {index}: DELETE answered 409 ({text}) but it ran {called} times"
            assert final["status"] == "SUCCESS", final
        else:
            raise AssertionError(f"job {index}: DELETE answered {code}: {text}")
    sent = sorted(s for _, _, s in answers)
    assert receiver.double_starts() == {}
    assert calls_to(receiver, "/queued") == 0 and job(system, queued["id"])["status"] == "CANCELLED"
    assert attempts(system, queued["id"]) == []
    print(f"\ncancel at the fire moment: {won} x 200 (never ran), {lost} x 409 (ran once); DELETEs sent "
          f"{sent[0]:+.1f}..{sent[-1]:+.1f} ms around T")

    # (c) cancel while RUNNING: 409 naming RUNNING, and it still ends SUCCESS
    sleeper = create(system, name="cancel-running", type="sleep", delay_seconds=1, payload={"seconds": 3})
    wait_for(lambda: job(system, sleeper["id"])["status"] == "RUNNING", timeout=30, what="RUNNING")
    response = delete(system, sleeper["id"])
    assert response.status_code == 409, response.text
    assert "RUNNING" in response.json()["message"], response.text
    wait_for(lambda: job(system, sleeper["id"])["status"] == "SUCCESS", timeout=30, what="SUCCESS")
    assert [a["status"] for a in attempts(system, sleeper["id"])] == ["SUCCESS"]
    print(f"cancel while RUNNING: 409 {response.json()['message']!r}; {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 4. bad messages


@pytest.mark.timeout(360)
def test_bad_messages_on_both_topics_are_dead_lettered_and_the_partition_flows(
    make_system: Callable[..., System], receiver: Receiver
) -> None:
    began = time.monotonic()
    system = make_system()
    settings = system.settings
    oversized = json.dumps({"v": 1, "pad": "x" * settings.max_message_bytes}).encode()

    def bad(good: bytes) -> dict[str, bytes]:
        body = json.loads(good)
        return {
            "malformed": b"\x00\xffnot json{",
            "truncated": good[: len(good) // 2],
            "wrong-version": json.dumps({**body, "v": 99}).encode(),
            "oversized": oversized,
        }

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=4 * settings.max_message_bytes)
    sent: dict[tuple[str, str], Any] = {}
    try:
        # Connected, and knowing both topics, before the job exists: sending takes milliseconds
        # then, well inside the 3 s before the scanner may dispatch the job.
        for topic in (settings.topic_jobs, settings.topic_updates):
            assert producer.partitions_for(topic), topic
        # Due in 7 s: the scanner (not the API) dispatches it, after the bad messages below,
        # which carry its id as the key and so sit on the same partitions before it.
        valid = create(system, name="after-bad", type="http", delay_seconds=7,
                       payload={"url": f"{receiver.url}/after-bad"})
        assert valid["status"] == "SCHEDULED", valid
        key = valid["id"].encode()
        now = utcnow()
        dispatch = encode_dispatch(DispatchMessage(
            job_id=uuid.UUID(valid["id"]), token=1, name="x", type="noop", payload={},
            execute_at=now, attempt=1, max_retries=0, timeout_seconds=5.0,
        ))
        update = encode_update(UpdateMessage(
            job_id=uuid.UUID(valid["id"]), token=1, status="SUCCESS", attempt=1, at=now, executor="forged",
        ))
        for topic, good in ((settings.topic_jobs, dispatch), (settings.topic_updates, update)):
            for kind, value in bad(good).items():
                sent[(topic, kind)] = producer.send(topic, key=key, value=value)
        producer.flush(15)
        sent = {k: f.get(timeout=15) for k, f in sent.items()}  # RecordMetadata: partition, offset
    finally:
        producer.close(5)

    letters: list[dict] = []

    def dead_letters() -> bool:
        letters[:] = [json.loads(r.value) for r in read_to_end(settings.kafka_bootstrap, settings.topic_dlq)]
        return len([x for x in letters if x.get("source_topic")]) >= 8

    wait_for(dead_letters, timeout=60, interval=0.5, what="8 dead letters")
    by_source = {}
    for letter in letters:
        if letter.get("source_topic"):
            by_source.setdefault(letter["source_topic"], []).append(letter)
    for topic in (settings.topic_jobs, settings.topic_updates):
        got = by_source.get(topic, [])
        assert len(got) == 4, (topic, got)
        reasons = " | ".join(x["reason"] for x in got)
        assert reasons.count("not valid JSON") == 2 and "version 99" in reasons and "exceeds" in reasons, reasons
        assert all(x["job_id"] == valid["id"] for x in got)
        assert {x["offset"] for x in got} == {sent[(topic, k)].offset for k in ("malformed", "truncated", "wrong-version", "oversized")}

    wait_for(lambda: job(system, valid["id"])["status"] == "SUCCESS", timeout=60, what="the valid job SUCCESS")
    assert calls_to(receiver, "/after-bad") == 1
    # The valid dispatch and its updates came after the bad messages, on the same partitions.
    for topic in (settings.topic_jobs, settings.topic_updates):
        records = [r for r in read_to_end(settings.kafka_bootstrap, topic) if r.key == key]
        bad_offsets = {sent[(topic, k)].offset for k in ("malformed", "truncated", "wrong-version", "oversized")}
        good = [r for r in records if r.offset not in bad_offsets]
        assert good and all(r.partition == sent[(topic, "malformed")].partition for r in records)
        assert min(r.offset for r in good) > max(bad_offsets), (topic, [(r.partition, r.offset) for r in records])
    forged = job(system, valid["id"])
    assert forged["executor"] != "forged"
    alive = all_alive(system)
    assert all(code is None for code in alive.values()), f"a service died: {alive}"
    print(f"\n8 bad messages (malformed, truncated, wrong version, oversized x 2 topics) dead-lettered; "
          f"the valid job behind them ran; {time.monotonic() - began:.1f} s")
