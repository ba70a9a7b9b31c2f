"""The consumer loop's decisions without a broker: bad records are dead-lettered, a failing
batch is split to find its poison record, and a member whose join never completes is given up.
(The same behaviour over the real broker: tests/integration/test_poison_records.py and
test_stuck_group.py.)"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from common.infra.deadletter import DeadLetter
from common.infra.config import load_settings
from common.infra.consumer import POISON_TRIES, ConsumerLoop
from common.infra.errors import MessageError


@dataclass
class Record:
    value: bytes | None
    offset: int
    key: bytes | None = b"job"
    topic: str = "jobs"
    partition: int = 0


class FakeProducer:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def dead_letter(self, letter: DeadLetter, wait: bool = False) -> bool:
        self.letters.append(letter)
        return True


def decode(raw: bytes | None, max_bytes: int) -> int:
    if raw is None or not raw.isdigit():
        raise MessageError(f"not a number: {raw!r}")
    if raw == b"666":
        raise RecursionError("an error nobody expected")
    return int(raw)


def make_loop(handle: Any, **settings: Any) -> tuple[ConsumerLoop[int], FakeProducer]:
    producer = FakeProducer()
    stop = threading.Event()
    loop: ConsumerLoop[int] = ConsumerLoop(
        load_settings({}, **settings), topic="jobs", group_id="g", decode=decode, handle=handle,
        stop=stop, producer=producer,  # type: ignore[arg-type]
    )
    return loop, producer


def test_undecodable_records_are_dead_lettered_and_the_rest_handled() -> None:
    handled: list[list[int]] = []
    loop, producer = make_loop(lambda batch: handled.append(batch) or True)
    records = [Record(b"1", 0), Record(b"junk", 1), Record(None, 2), Record(b"666", 3), Record(b"2", 4)]
    assert loop._process(records) is True
    assert handled == [[1, 2]]
    assert [(letter.offset, letter.reason.split(":")[0]) for letter in producer.letters] == [
        (1, "not a number"), (2, "not a number"), (3, "RecursionError"),
    ]
    assert loop.health.dead_lettered == 3


def test_a_poison_record_is_found_tried_a_bounded_number_of_times_and_dead_lettered() -> None:
    calls: list[list[int]] = []

    def handle(batch: list[int]) -> bool:
        calls.append(batch)
        if 13 in batch:
            raise ValueError("cannot store 13")
        return True

    loop, producer = make_loop(handle)
    assert loop._process([Record(b"12", 0), Record(b"13", 1), Record(b"14", 2)]) is True
    assert calls[0] == [12, 13, 14]  # the batch once, never again whole
    assert calls[1:] == [[12]] + [[13]] * POISON_TRIES + [[14]]
    (letter,) = producer.letters
    assert letter.offset == 1 and letter.reason == f"handler failed {POISON_TRIES} times: ValueError: cannot store 13"
    assert json.loads(letter.encode())["original"] == "13"


def test_a_handler_stopped_midway_leaves_the_batch_uncommitted() -> None:
    loop, producer = make_loop(lambda batch: False)
    assert loop._process([Record(b"1", 0)]) is False
    assert producer.letters == []


class Coordinator:
    def __init__(self) -> None:
        self.joined = False
        self.resets = 0

    def stable(self) -> bool:
        return self.joined

    def reset_generation(self) -> None:
        self.resets += 1


class Consumer:
    def __init__(self, partitions: int = 0) -> None:
        self._coordinator = Coordinator()
        self.partitions = partitions

    def assignment(self) -> set[int]:
        return set(range(self.partitions)) if self._coordinator.joined else set()


def test_a_member_that_never_joins_is_given_up_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("common.infra.consumer.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("common.infra.health.time.monotonic", lambda: clock[0])
    loop, _ = make_loop(lambda batch: True, group_join_timeout_seconds=30.0)
    loop.health.unstable_since = None
    consumer = Consumer(partitions=2)
    member_since = clock[0]
    assert loop._stuck(consumer, member_since) is False
    clock[0] += 30.0
    assert loop._stuck(consumer, member_since) is False  # at the bound, not past it
    assert loop.health.report()["state"] == "joining"
    clock[0] += 0.5
    assert loop._stuck(consumer, member_since) is True
    assert loop.health.report()["state"] == "stuck" and loop.health.rejoins == 1
    # The fresh member gets its own full bound, and the health stays "stuck" meanwhile.
    fresh, fresh_since = Consumer(partitions=2), clock[0]
    clock[0] += 10.0
    assert loop._stuck(fresh, fresh_since) is False
    assert loop.health.report()["state"] == "stuck" and loop.health.report()["unstable_seconds"] == 40.5
    fresh._coordinator.joined = True
    assert loop._stuck(fresh, fresh_since) is False
    assert loop.health.report()["state"] == "stable" and loop.health.partitions == 2 and loop.assigned.is_set()


def test_a_member_recreated_after_a_broker_outage_gets_a_full_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("common.infra.consumer.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("common.infra.health.time.monotonic", lambda: clock[0])
    loop, _ = make_loop(lambda batch: True, group_join_timeout_seconds=30.0)
    loop.health.unstable_since = 0.0  # out of the group for 1000 s: the broker was away
    assert loop._stuck(Consumer(), member_since=clock[0] - 1.0) is False


def test_an_idle_member_of_a_stable_group_is_not_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    loop, _ = make_loop(lambda batch: True, group_join_timeout_seconds=0.001)
    consumer = Consumer(partitions=0)
    consumer._coordinator.joined = True
    assert loop._stuck(consumer, member_since=0.0) is False
    assert loop.health.report()["state"] == "stable" and not loop.assigned.is_set()
