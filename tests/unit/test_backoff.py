import random
from datetime import datetime, timedelta, timezone

import pytest

from common.core.backoff import after_failure, retries_left, retry_delay


def test_exponential_without_jitter():
    assert [retry_delay(n, base=2, cap=300) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]


def test_capped():
    assert retry_delay(20, base=2, cap=300) == 300


def test_jitter_stays_within_its_share():
    rng = random.Random(7)
    delays = [retry_delay(3, base=2, cap=300, jitter=0.1, rng=rng) for _ in range(200)]
    assert min(delays) >= 8 and max(delays) <= 8.8
    assert len(set(delays)) > 100  # really random, not a constant


def test_attempt_is_one_based():
    with pytest.raises(ValueError):
        retry_delay(0, base=1, cap=1)


def test_three_retries_mean_four_attempts():
    assert [retries_left(n, 3) for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert retries_left(1, 0) is False


FAILED_AT = datetime(2026, 3, 29, 0, 59, 59, tzinfo=timezone.utc)


@pytest.mark.parametrize("attempt,delay", [(1, 2), (2, 4), (3, 8)])
def test_a_failure_with_retries_left_retries_after_the_backoff(attempt: int, delay: float) -> None:
    decision = after_failure(attempt, 3, permanent=False, failed_at=FAILED_AT, base=2, cap=300)
    assert decision.retries and decision.reason is None
    assert decision.retry_at == FAILED_AT + timedelta(seconds=delay)


def test_the_last_attempt_fails_the_job_and_dead_letters_it() -> None:
    decision = after_failure(4, 3, permanent=False, failed_at=FAILED_AT, base=2, cap=300)
    assert not decision.retries and decision.retry_at is None
    assert decision.reason == "retries exhausted"


def test_a_permanent_failure_never_retries() -> None:
    decision = after_failure(1, 10, permanent=True, failed_at=FAILED_AT, base=2, cap=300)
    assert (decision.retry_at, decision.reason) == (None, "permanent failure")


def test_no_retries_means_the_first_failure_is_final() -> None:
    assert after_failure(1, 0, permanent=False, failed_at=FAILED_AT, base=2, cap=300).reason == "retries exhausted"
