"""The one retry helper: the backoff formula, the loop pacer and retry() of one call."""

from __future__ import annotations

import threading

import pytest

from common.infra.retry import Backoff, GaveUp, Pacer, exponential_delay, retry


def test_exponential_delay_doubles_and_caps() -> None:
    assert [exponential_delay(n, base=0.5, cap=5.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert exponential_delay(10_000, base=1.0, cap=7.0) == 7.0  # no overflow on long outages
    with pytest.raises(ValueError):
        exponential_delay(0, base=1.0, cap=2.0)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "ok"."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.left, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error("down")
        return "ok"


def test_retry_returns_after_transient_failures() -> None:
    call = Flaky(2)
    assert retry(call, on=ConnectionError, backoff=Backoff(0.001, 0.002), what="x") == "ok"
    assert call.calls == 3


def test_retry_gives_up_after_tries_with_the_last_error() -> None:
    call = Flaky(10)
    with pytest.raises(GaveUp, match="gave up after 3 tries") as caught:
        retry(call, on=ConnectionError, backoff=Backoff(0.001, 0.002), tries=3, what="x")
    assert call.calls == 3 and isinstance(caught.value.__cause__, ConnectionError)


def test_retry_gives_up_before_a_pause_would_pass_the_deadline() -> None:
    call = Flaky(10)
    with pytest.raises(GaveUp):
        retry(call, on=ConnectionError, backoff=Backoff(10.0, 10.0), give_up_after=1.0, what="x")
    assert call.calls == 1  # the first pause alone would end past the deadline: no waiting


def test_retry_lets_other_errors_through_at_once() -> None:
    call = Flaky(1, error=KeyError)
    with pytest.raises(KeyError):
        retry(call, on=ConnectionError, backoff=Backoff(0.001, 0.002), what="x")
    assert call.calls == 1


def test_retry_stops_when_the_stop_event_is_set() -> None:
    stop = threading.Event()
    stop.set()
    call = Flaky(10)
    with pytest.raises(GaveUp):
        retry(call, on=ConnectionError, backoff=Backoff(60.0, 60.0), stop=stop, what="x")
    assert call.calls == 1


def test_pacer_grows_and_starts_over() -> None:
    stop = threading.Event()
    stop.set()  # the waits return at once; the pauses are still computed
    pacer = Pacer(Backoff(1.0, 3.0), stop)
    assert [pacer.failed("down") for _ in range(3)] == [1.0, 2.0, 3.0]
    pacer.succeeded()
    assert pacer.failed("down again") == 1.0
