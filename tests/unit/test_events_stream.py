"""What one stream sends for the events its hub hands it (api/events.py, no database: a stream
that does not resume from the past reads none): the resume point on each id: line, events at or
below Last-Event-ID left out, keep-alives in silence, the end of a stream whose client lags, and
of every stream when the process is asked to stop."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from datetime import datetime, timezone
from typing import Iterator

from api import events as api_events
from api.events import Subscription, _stream
from common.core.events import Event, EventFilter
from common.infra.config import load_settings

SETTINGS = load_settings({}, events_stream_seconds=30, events_keepalive_seconds=0.05)


class FakeHub:
    def __init__(self) -> None:
        self.unsubscribed: list[Subscription] = []

    def unsubscribe(self, sub: Subscription) -> None:
        self.unsubscribed.append(sub)


def event(event_id: int) -> Event:
    return Event(id=event_id, job_id=uuid.UUID(int=event_id), tenant="acme", status="QUEUED",
                 previous_status="SCHEDULED", attempt=0, schedule_id=None, name="n", type="noop",
                 at=datetime(2026, 11, 24, tzinfo=timezone.utc))


def sent(text: str) -> tuple[int, int]:
    """(id: line, data.id) of one event's text."""
    lines = text.split("\n")
    return int(lines[0].removeprefix("id: ")), json.loads(lines[2].removeprefix("data: "))["id"]


def opened(sub: Subscription, after: int | None = None) -> tuple[Iterator[str], FakeHub]:
    hub = FakeHub()
    stream = _stream(hub, sub, after, SETTINGS)  # type: ignore[arg-type]
    assert next(stream) == "retry: 2000\n\n"
    return stream, hub


def test_the_resume_point_stays_below_an_id_still_awaited() -> None:
    sub = Subscription(EventFilter(), start=10, mark=10, pending=frozenset())
    stream, hub = opened(sub)
    sub.offer([event(12)], mark=10)  # 11 not committed yet
    assert sent(next(stream)) == (10, 12)
    sub.offer([event(11), event(13)], mark=13)  # 11 committed late
    assert [sent(next(stream)) for _ in range(2)] == [(11, 11), (13, 13)]
    sub.offer([event(15)], mark=15)
    assert sent(next(stream)) == (15, 15)
    stream.close()
    assert hub.unsubscribed == [sub]


def test_a_late_event_below_the_resume_point_keeps_it() -> None:
    sub = Subscription(EventFilter(), start=0, mark=0, pending=frozenset())
    stream, _ = opened(sub)
    sub.offer([event(5)], mark=5)
    assert sent(next(stream)) == (5, 5)
    sub.offer([event(3)], mark=5)  # (a hub does not do this; the stream stays safe if one did)
    assert sent(next(stream)) == (5, 3)  # the id: line never goes back
    stream.close()


def test_events_at_or_below_last_event_id_are_left_out() -> None:
    # A client coming from another process that had read further than this one's poller.
    sub = Subscription(EventFilter(), start=10, mark=10, pending=frozenset())
    stream, _ = opened(sub, after=12)
    sub.offer([event(11), event(12), event(13)], mark=13)
    assert sent(next(stream)) == (13, 13)
    stream.close()


def test_silence_sends_keep_alives() -> None:
    sub = Subscription(EventFilter(), start=0, mark=0, pending=frozenset())
    stream, _ = opened(sub)
    assert next(stream) == ": keep-alive\n\n"
    sub.offer([event(1)], mark=1)
    assert sent(next(stream)) == (1, 1)
    assert next(stream) == ": keep-alive\n\n"
    stream.close()


def test_a_client_that_lags_too_far_is_ended(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(api_events, "MAX_QUEUE", 3)
    sub = Subscription(EventFilter(), start=0, mark=0, pending=frozenset())
    stream, hub = opened(sub)
    sub.offer([event(1), event(2)], mark=2)
    sub.offer([event(3), event(4)], mark=4)  # 4 waiting > 3: dropped, the stream ends
    assert list(stream) == []
    assert hub.unsubscribed == [sub]


def test_streams_end_when_the_process_is_asked_to_stop(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(api_events, "STOPPING", threading.Event())
    sub = Subscription(EventFilter(), start=0, mark=0, pending=frozenset())
    stream, hub = opened(sub)
    api_events.STOPPING.set()
    sub.offer([event(1)], mark=1)
    assert list(stream) == [] and hub.unsubscribed == [sub]


def test_sigterm_sets_stopping_and_still_runs_the_servers_handler(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(api_events, "STOPPING", threading.Event())
    received: list[int] = []
    original = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # as gunicorn's worker does
    try:
        api_events._end_streams_on_sigterm()
        api_events._end_streams_on_sigterm()  # a second app in the same process: wrapped once
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)  # type: ignore[operator]
        assert api_events.STOPPING.is_set() and received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


def test_a_default_sigterm_is_left_alone() -> None:
    original = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        api_events._end_streams_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, original)
