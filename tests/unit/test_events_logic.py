"""The pure logic of the event stream: which events a filter selects, how ids missing below the
newest one read are tracked (PostgreSQL commits sequence values out of order), and the SSE text."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from common.core.events import Event, EventFilter, GapTracker, sse

JOB = uuid.UUID(int=1)
SCHEDULE = uuid.UUID(int=2)


def event(event_id: int = 7, **changes: object) -> Event:
    fields = dict(id=event_id, job_id=JOB, tenant="acme", status="RUNNING", previous_status="QUEUED", attempt=1,
                  schedule_id=SCHEDULE, name="nightly", type="noop",
                  at=datetime(2026, 11, 24, 13, 0, 0, 250000, tzinfo=timezone.utc))
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_an_empty_filter_selects_everything() -> None:
    assert EventFilter().matches(event())
    assert EventFilter().where() == []


def test_each_part_of_a_filter_must_hold() -> None:
    where = EventFilter(tenant="acme", job_id=JOB, schedule_id=SCHEDULE, statuses=frozenset({"RUNNING", "SUCCESS"}))
    assert where.matches(event())
    assert where.matches(event(status="SUCCESS"))
    assert not where.matches(event(status="FAILED"))
    assert not where.matches(event(tenant="other"))
    assert not where.matches(event(job_id=uuid.UUID(int=3)))
    assert not where.matches(event(schedule_id=None))
    assert len(where.where()) == 4


def test_a_tenant_filter_never_lets_another_tenant_through() -> None:
    where = EventFilter(tenant="acme")
    assert [e.tenant for e in (event(tenant="acme"), event(tenant="acme2"), event(tenant="ACME"))
            if where.matches(e)] == ["acme"]


def test_ids_read_in_order_leave_no_gap() -> None:
    tracker = GapTracker(position=10)
    assert tracker.observe([11, 12, 13], now=0.0) == [11, 12, 13]
    assert tracker.position == 13 and tracker.missing() == [] and tracker.watermark() == 13


def test_an_id_committed_late_is_delivered_once_when_it_appears() -> None:
    tracker = GapTracker(position=10, wait=5.0)
    assert tracker.observe([11, 13, 15], now=0.0) == [11, 13, 15]
    assert tracker.missing() == [12, 14]
    assert tracker.watermark() == 11  # a client resuming here gets 12 and 14 when they come
    assert tracker.observe([14, 16], now=1.0) == [14, 16]
    assert tracker.missing() == [12]
    assert tracker.observe([14, 12], now=2.0) == [12]  # 14 again is not new
    assert tracker.missing() == [] and tracker.watermark() == 16
    assert tracker.observe([12, 13, 16], now=3.0) == []


def test_a_gap_is_given_up_after_its_wait() -> None:
    tracker = GapTracker(position=0, wait=5.0)
    tracker.observe([2], now=0.0)
    tracker.observe([5], now=3.0)
    assert tracker.expire(now=4.9) == []
    assert tracker.expire(now=5.0) == [1]
    assert tracker.missing() == [3, 4] and tracker.watermark() == 2
    assert sorted(tracker.expire(now=8.0)) == [3, 4]
    assert tracker.watermark() == 5
    assert tracker.observe([1], now=9.0) == []  # given up: a late arrival is not delivered twice either


def test_the_watermark_never_goes_back() -> None:
    tracker = GapTracker(position=0, wait=1.0)
    marks = []
    for now, ids in enumerate([[1, 3], [4, 7], [2], [], [9], [5, 6, 8], []]):
        tracker.observe(ids, now=float(now))
        tracker.expire(now=float(now))
        marks.append(tracker.watermark())
    assert marks == sorted(marks) and marks[-1] == 9


def test_at_most_max_gaps_are_kept_the_newest() -> None:
    tracker = GapTracker(position=0, max_gaps=3)
    tracker.observe([100], now=0.0)
    assert tracker.missing() == [97, 98, 99]


def test_an_event_as_sent() -> None:
    text = sse(event(), resume_id=6)
    lines = text.split("\n")
    assert lines[:2] == ["id: 6", "event: job"] and text.endswith("\n\n")
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "id": 7, "job_id": str(JOB), "status": "RUNNING", "previous_status": "QUEUED",
        "at": "2026-11-24T13:00:00.250+00:00", "attempt": 1, "schedule_id": str(SCHEDULE), "name": "nightly",
        "type": "noop", "tenant": "acme"}
    assert json.loads(sse(event(schedule_id=None, previous_status=None), 7).split("\n")[2][6:])["schedule_id"] is None


def test_a_name_with_a_newline_stays_on_one_data_line() -> None:
    text = sse(event(name="two\nlines\r\n"), resume_id=7)
    assert text.count("\n") == 4 and "\r" not in text
