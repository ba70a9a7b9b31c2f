"""Service metrics over the real PostgreSQL and tansu: a scanner's passes (its own run loop),
what it found overdue or expired, the result writer's recorded updates, a consumer's lag as
its fetches report it, and the endpoint every background service serves them on."""

from __future__ import annotations

import json
import threading
import urllib.request
from datetime import timedelta

import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from common.core import store
from common.core.models import Job
from common.infra.clock import utcnow
from common.infra.config import load_settings
from common.infra.consumer import consumer_lag
from common.infra.db import session_scope
from common.infra.health import HealthServer
from common.infra.kafka import Producer
from common.infra.metrics import endpoint_port
from common.core.messages import UpdateMessage
from result_service.writer import ResultWriter
from scheduler_service.metrics import measure_backlog
from scheduler_service.scanner import Scanner
from tests.helpers import add_job, wait_for


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_scanner_passes_count_what_they_found_and_dispatched(kafka_settings) -> None:
    overdue = [add_job(kafka_settings, due_in=-30) for _ in range(2)]
    expired = add_job(kafka_settings, due_in=-30)
    with session_scope(kafka_settings) as session:  # dispatched once, its lease ran out since
        session.execute(sa.update(Job).where(Job.id == expired).values(
            status="QUEUED", dispatch_token=1, lease_until=utcnow() - timedelta(seconds=5)))
    with session_scope(kafka_settings) as session:
        assert measure_backlog(session, utcnow()) == (2, 1)
    assert sample("chronoq_scanner_overdue_jobs") == 2 and sample("chronoq_scanner_expired_leases") == 1
    passes = sample("chronoq_scanner_passes_total", outcome="ok")
    published = sample("chronoq_scanner_jobs_total", result="published")
    stop = threading.Event()
    scanner = Scanner(kafka_settings, stop)
    thread = threading.Thread(target=scanner.run, name="test-scanner")
    thread.start()
    try:
        wait_for(lambda: sample("chronoq_scanner_passes_total", outcome="ok") > passes, timeout=30,
                 what="a scanner pass")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    # The pass dispatched the three; its backlog measure ran first.
    assert sample("chronoq_scanner_jobs_total", result="published") - published == 3
    assert sample("chronoq_scanner_pass_duration_seconds_count") >= 1
    assert sample("chronoq_scanner_pass_claimed_jobs_count") >= 1
    assert abs(sample("chronoq_scanner_last_pass_timestamp_seconds") - utcnow().timestamp()) < 30
    with session_scope(kafka_settings) as session:
        statuses = session.scalars(sa.select(Job.status).where(Job.id.in_([*overdue, expired]))).all()
    assert statuses == ["QUEUED"] * 3


def test_result_writer_counts_applied_and_ignored_updates(kafka_settings) -> None:
    job_id = add_job(kafka_settings, due_in=0)
    with session_scope(kafka_settings) as session:
        token = store.claim_ids(session, [job_id], now=utcnow(), lease=10).messages[0].token
    now = utcnow()
    running = UpdateMessage(job_id=job_id, token=token, status="RUNNING", attempt=1, at=now, executor="e1",
                            started_at=now)
    done = UpdateMessage(job_id=job_id, token=token, status="SUCCESS", attempt=1, at=now, executor="e1",
                         started_at=now, finished_at=now, output={})
    applied, ignored = sample("chronoq_results_updates_total", result="applied"), \
        sample("chronoq_results_updates_total", result="ignored")
    writer = ResultWriter(kafka_settings, threading.Event(), producer=Producer(kafka_settings))
    assert writer.handle([running, done])
    assert writer.handle([done])  # a replay changes nothing
    assert sample("chronoq_results_updates_total", result="applied") - applied == 2
    assert sample("chronoq_results_updates_total", result="ignored") - ignored == 1
    assert sample("chronoq_results_batch_seconds_count") >= 2


def test_consumer_lag_is_what_the_member_has_not_fetched(kafka_settings) -> None:
    producer = Producer(kafka_settings)
    assert all(producer.send_all(kafka_settings.topic_updates, [(b"same-key", b"{}")] * 6))
    consumer = KafkaConsumer(bootstrap_servers=kafka_settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(kafka_settings.topic_updates, p)
                      for p in sorted(consumer.partitions_for_topic(kafka_settings.topic_updates) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        got = 0
        while got < 2:
            got += sum(len(batch) for batch in consumer.poll(timeout_ms=1000, max_records=2 - got).values())
        # The fetch brought all six and the high-water mark; two were handed out.
        assert consumer_lag(consumer) == 4
        while got < 6:
            got += sum(len(batch) for batch in consumer.poll(timeout_ms=1000, max_records=10).values())
        assert got == 6 and consumer_lag(consumer) == 0
    finally:
        consumer.close()


def test_endpoints_share_no_port_and_fall_back_when_theirs_is_taken(kafka_settings) -> None:
    first = HealthServer(kafka_settings, lambda: (True, {}), "executor", port=0).start()
    second = HealthServer(kafka_settings, lambda: (True, {}), "executor", port=first.port).start()
    try:
        assert first.port and second.port and first.port != second.port
        for server in (first, second):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as answer:
                assert json.loads(answer.read())["service"] == "executor"
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
                assert b"chronoq_scanner_passes_total" in answer.read()
    finally:
        first.stop()
        second.stop()
    # By default each service its own port; one CHRONOQ_HEALTH_PORT (a container each) for all.
    defaults = load_settings({})
    ports = {name: endpoint_port(defaults, name) for name in ("api", "scanner", "executor", "results")}
    assert ports == {"api": 9103, "scanner": 9101, "executor": 9110, "results": 9102}
    one = load_settings({"CHRONOQ_HEALTH_PORT": "9090"})
    assert {endpoint_port(one, name) for name in ports} == {9090}
    assert endpoint_port(load_settings({"CHRONOQ_SCANNER_METRICS_PORT": "off"}), "scanner") is None
