"""The scanner on the real PostgreSQL and tansu: claims and publishes, keyed by job id."""

from __future__ import annotations

import threading

from common.infra.clock import utcnow
from common.infra.kafka import Producer
from common.core.messages import decode_dispatch
from scheduler_service.scanner import Scanner
from tests.helpers import add_job, get_job, read_topic, wait_for


def test_scan_publishes_due_jobs_keyed_by_id(kafka_settings):
    due = [add_job(kafka_settings, due_in=1, type="noop") for _ in range(5)]
    overdue = add_job(kafka_settings, due_in=-600)
    later = add_job(kafka_settings, due_in=3600)
    result = Scanner(kafka_settings, threading.Event()).scan(utcnow())
    assert result.published == 6
    records = read_topic(kafka_settings, kafka_settings.topic_jobs, expect=6, timeout=30)
    messages = [decode_dispatch(r.value) for r in records]
    assert {m.job_id for m in messages} == set(due) | {overdue}
    assert all(r.key == str(decode_dispatch(r.value).job_id).encode() for r in records)
    assert all(m.token == 1 and m.attempt == 1 for m in messages)
    assert get_job(kafka_settings, later).status == "SCHEDULED"
    assert all(get_job(kafka_settings, j).status == "QUEUED" for j in due)


def test_scan_works_through_more_than_one_batch(kafka_settings):
    from dataclasses import replace

    settings = replace(kafka_settings, scan_batch_size=7)
    for _ in range(30):
        add_job(settings, due_in=1)
    assert Scanner(settings, threading.Event()).scan(utcnow()).published == 30


def test_unacknowledged_publish_puts_jobs_back(settings):
    from dataclasses import replace

    dead = replace(settings, kafka_bootstrap="127.0.0.1:1")
    job_id = add_job(dead, due_in=1)
    result = Scanner(dead, threading.Event(), producer=Producer(dead)).scan(utcnow())
    assert result.published == 0
    job = get_job(dead, job_id)
    assert job.status == "SCHEDULED"  # ready for the next scan, not stuck in QUEUED


def test_two_scanners_at_once_publish_each_job_once(kafka_settings):
    ids = {add_job(kafka_settings, due_in=1) for _ in range(200)}
    from dataclasses import replace

    settings = replace(kafka_settings, scan_batch_size=10)
    now = utcnow()
    scanners = [Scanner(settings, threading.Event()) for _ in range(2)]
    together = threading.Barrier(2)  # both scan from the start, however slowly threads start

    def scan(scanner: Scanner) -> None:
        together.wait(30)
        scanner.scan(now)

    threads = [threading.Thread(target=scan, args=(s,)) for s in scanners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.totals.published for s in scanners) == 200
    assert all(s.totals.published > 0 for s in scanners)
    messages = [decode_dispatch(r.value) for r in read_topic(settings, settings.topic_jobs, expect=200, timeout=30)]
    assert sorted(m.job_id for m in messages) == sorted(ids)


def test_run_loop_dispatches_a_job_created_later(kafka_settings):
    stop = threading.Event()
    scanner = Scanner(kafka_settings, stop)
    thread = threading.Thread(target=scanner.run)
    thread.start()
    try:
        first = add_job(kafka_settings, due_in=-1)  # overdue: once it is QUEUED, the loop has scanned
        wait_for(lambda: get_job(kafka_settings, first).status == "QUEUED", timeout=30, what="the first scan")
        job_id = add_job(kafka_settings, due_in=3)  # created after that scan: a later wake must take it
        wait_for(lambda: get_job(kafka_settings, job_id).status == "QUEUED", timeout=30, what="dispatch")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    records = read_topic(kafka_settings, kafka_settings.topic_jobs, expect=2, timeout=30)
    published = {decode_dispatch(r.value).job_id: decode_dispatch(r.value) for r in records}
    assert set(published) == {first, job_id}
    job = get_job(kafka_settings, job_id)
    assert published[job_id].token == job.dispatch_token == 1
    assert published[job_id].execute_at == job.execute_at


def test_producer_fails_fast_while_the_broker_is_known_to_be_down(settings):
    import time
    from dataclasses import replace

    import pytest

    from common.infra.errors import BrokerUnavailable

    producer = Producer(replace(settings, kafka_bootstrap="127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        producer.send("t", b"k", b"v")  # the first try waits for the bootstrap timeout
    first = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="retrying soon"):
        producer.send("t", b"k", b"v")
    again = time.monotonic() - started
    print(f"\nsend to a down broker: first {first * 1000:.0f} ms, again {again * 1000:.1f} ms")
    # Answered without trying to connect (the "retrying soon" above): well under the 3 s a
    # connection attempt waits (the producer's bootstrap timeout), however loaded the machine.
    assert again < 1.5


def test_send_all_puts_each_key_where_send_puts_it(kafka_settings):
    """send_all chooses partitions itself: a job's messages must still share one partition
    (and so keep their order) whichever of the two published them."""
    import uuid

    producer = Producer(kafka_settings)
    keys = [str(uuid.uuid4()).encode() for _ in range(30)]
    assert all(producer.send_all(kafka_settings.topic_jobs, [(key, b"together") for key in keys]))
    for key in keys:
        producer.send(kafka_settings.topic_jobs, key, b"alone")
    producer.close()
    partitions: dict[bytes, set[int]] = {}
    for record in read_topic(kafka_settings, kafka_settings.topic_jobs, expect=60, timeout=30):
        partitions.setdefault(record.key, set()).add(record.partition)
    assert sorted(partitions) == sorted(keys)
    assert all(len(used) == 1 for used in partitions.values())
    assert len(set().union(*partitions.values())) > 1  # the keys did spread over the partitions
