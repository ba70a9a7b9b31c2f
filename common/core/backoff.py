"""A job's retry decisions as pure functions: whether another attempt follows, and after how
long (the same capped exponential formula, with jitter, as every other retry in chronoq)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from common.infra.retry import exponential_delay


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one:
    ``base * 2**(attempt-1)``, capped at ``cap``, plus up to ``jitter`` of itself at random."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    return exponential_delay(attempt, base=base, cap=cap, jitter=jitter, rng=rng)


def retries_left(attempt: int, max_retries: int) -> bool:
    """Whether another attempt follows failed attempt ``attempt``: at most 1 + max_retries."""
    return attempt < 1 + max_retries


@dataclass(frozen=True)
class Failure:
    """What follows a failed attempt: a retry at ``retry_at``, or the end of the job
    (``retry_at`` None) with the dead-letter ``reason``."""

    retry_at: datetime | None
    reason: str | None = None

    @property
    def retries(self) -> bool:
        return self.retry_at is not None


def after_failure(
    attempt: int,
    max_retries: int,
    *,
    permanent: bool,
    failed_at: datetime,
    base: float,
    cap: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> Failure:
    """The retry/fail/dead-letter decision for failed attempt ``attempt``: retry after the
    backoff while retries are left and the failure is not permanent (a bad payload, an unknown
    type, a refused host fail the same way every time); otherwise the job FAILED, and it goes
    to the dead-letter topic with the reason."""
    if permanent:
        return Failure(None, "permanent failure")
    if not retries_left(attempt, max_retries):
        return Failure(None, "retries exhausted")
    delay = retry_delay(attempt, base=base, cap=cap, jitter=jitter, rng=rng)
    return Failure(failed_at + timedelta(seconds=delay))
