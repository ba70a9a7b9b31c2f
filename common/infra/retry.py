"""The one retry helper: exponential backoff as a pure formula, a :class:`Pacer` for loops that
keep going after a failure (scanner, consumer loop), and :func:`retry` for a single call that
is tried again (a database statement, an acknowledged publish).

Hand-written rather than tenacity: the loops are not call-shaped, and every wait must end at
once when the service's stop event is set; both shapes share one policy and one log line."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def exponential_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th failure (1-based): ``base * 2**(failures-1)``,
    capped at ``cap``, plus up to ``jitter`` of itself at random."""
    if failures < 1:
        raise ValueError("failures is 1-based")
    delay = min(cap, base * (2 ** min(failures - 1, 64)))
    if jitter:
        delay += delay * jitter * (rng or random).random()
    return min(delay, cap * (1 + jitter))


@dataclass(frozen=True)
class Backoff:
    """A backoff policy: the first pause and the longest one."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        return exponential_delay(failures, base=self.first, cap=self.cap)


#: The pauses of chronoq's service loops (named so that their numbers live in one place).
LOOP = Backoff(first=0.5, cap=5.0)           # scanner, consumer loop: a pass is cheap, jobs wait
DATABASE = Backoff(first=0.5, cap=10.0)      # result writer waiting for its database
FIRE_PATH = Backoff(first=0.1, cap=2.0)      # an executor's statement for a job about to run
PUBLISH = Backoff(first=0.5, cap=4.0)        # an acknowledged publish of an attempt's end


class Pacer:
    """Backoff for a loop: :meth:`failed` logs why and waits the next pause (ending early when
    ``stop`` is set); :meth:`succeeded` starts the pauses over."""

    def __init__(self, backoff: Backoff, stop: threading.Event | None = None, logger: logging.Logger = log) -> None:
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.failures = 0
        self.log = logger

    def failed(self, why: str, level: int = logging.WARNING) -> float:
        """Log ``why`` with the coming pause and wait it out; returns the pause."""
        self.failures += 1
        pause = self.backoff.delay(self.failures)
        self.log.log(level, "%s; retrying in %.1fs", why, pause)
        self.stop.wait(pause)
        return pause

    def succeeded(self) -> None:
        self.failures = 0


class GaveUp(Exception):
    """:func:`retry` stopped trying; ``__cause__`` is the last error."""


def retry(
    call: Callable[[], T],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    backoff: Backoff,
    what: str,
    tries: int | None = None,
    give_up_after: float | None = None,
    stop: threading.Event | None = None,
    logger: logging.Logger = log,
) -> T:
    """Call ``call`` until it returns; an error of a type in ``on`` is logged (naming ``what``)
    and tried again after the next pause. Raises :class:`GaveUp` from the last error after
    ``tries`` calls, once the next pause would end past ``give_up_after`` seconds, or when
    ``stop`` is set; any other error propagates at once."""
    pacer = Pacer(backoff, stop, logger)
    started = time.monotonic()
    while True:
        try:
            return call()
        except on as exc:
            failures = pacer.failures + 1
            out_of_tries = tries is not None and failures >= tries
            out_of_time = (
                give_up_after is not None
                and time.monotonic() - started + backoff.delay(failures) > give_up_after
            )
            if out_of_tries or out_of_time or pacer.stop.is_set():
                raise GaveUp(f"{what}: gave up after {failures} tries: {exc}") from exc
            pacer.failed(f"{what} failed ({exc})")
            if pacer.stop.is_set():
                raise GaveUp(f"{what}: stopped while retrying: {exc}") from exc
