"""Retry backoff as a pure function: exponential, capped, with optional jitter."""

from __future__ import annotations

import random


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
    delay = min(cap, base * (2 ** (attempt - 1)))
    if jitter:
        delay += delay * jitter * (rng or random).random()
    return min(delay, cap * (1 + jitter))


def retries_left(attempt: int, max_retries: int) -> bool:
    """Whether another attempt follows failed attempt ``attempt``: at most 1 + max_retries."""
    return attempt < 1 + max_retries
