"""Rate limits of the API, on the ``limits`` library: counters in this process
(``memory://``) or shared by every API process (``redis://``), CHRONOQ_RATE_LIMIT_STORAGE."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond, storage, strategies

from common.infra.config import Settings


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds until the window has room again


class Limiter:
    """Sliding-window counters keyed by what is limited (a tenant, a client address)."""

    def __init__(self, settings: Settings) -> None:
        self._storage = storage.storage_from_string(settings.rate_limit_storage)
        self._strategy = strategies.SlidingWindowCounterRateLimiter(self._storage)
        self._failures = RateLimitItemPerMinute(settings.auth_failures_per_minute)

    def _verdict(self, item: RateLimitItemPerSecond, *keys: str) -> Verdict:
        reset = self._strategy.get_window_stats(item, *keys).reset_time
        return Verdict(False, max(1, math.ceil(reset - time.time())))

    def failures_allowed(self, address: str) -> Verdict:
        """Whether ``address`` may try to authenticate (it has not failed too often)."""
        if self._strategy.test(self._failures, "auth-failures", address):
            return Verdict(True)
        return self._verdict(self._failures, "auth-failures", address)

    def failed(self, address: str) -> None:
        """Count a failed authentication from ``address``."""
        self._strategy.hit(self._failures, "auth-failures", address)

    def take(self, tenant: str, count: int, *, per_second: float, burst: int) -> Verdict:
        """Take ``count`` creates from ``tenant``'s allowance of ``per_second``, averaged over
        a window long enough that a request of ``burst`` jobs (the largest batch) fits."""
        window = max(1, math.ceil(burst / per_second))
        item = RateLimitItemPerSecond(max(1, int(per_second * window)), window)
        if self._strategy.hit(item, "creates", tenant, cost=count):
            return Verdict(True)
        return self._verdict(item, "creates", tenant)
