"""A job's retry decisions as pure functions: whether another attempt follows, and after how
long (the same capped exponential formula, with jitter, as every other retry in chronoq)."""

from __future__ import annotations

import random

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
