import random

import pytest

from common.core.backoff import retries_left, retry_delay


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
