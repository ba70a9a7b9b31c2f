"""The scanner loop as a step function: :meth:`Scanner.scan` claims and publishes everything
due before the dispatch horizon; :meth:`Scanner.run` calls it at every window boundary (and
every sweep interval between them) until stopped."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Callable

from common.core import schedules, store, workflow_release
from common.infra import clock as wall_clock
from common.infra.config import Settings
from common.infra.db import session_scope
from common.core.dispatch import DispatchResult, dispatch
from common.infra.errors import BrokerUnavailable, DatabaseUnavailable
from common.infra.health import HealthCheck
from common.infra.kafka import Producer
from common.infra.retry import LOOP, Pacer
from common.core.windows import dispatch_horizon, next_boundary
from scheduler_service import metrics
from scheduler_service.maintenance import Maintenance

log = logging.getLogger(__name__)

#: Threads that claim and publish side by side when a window holds more than one batch.
CLAIMERS = 2
#: Transactions of occurrence-making per scan at most (each locks up to 100 schedules and
#: makes up to 1,000 occurrences of each); the rest waits for the next wake.
OCCURRENCE_PASSES = 20


def next_wake(now: datetime, interval: float, sweep: float, last_sweep: datetime) -> datetime:
    """When the scanner wakes next: the next window boundary, or the next sweep if sooner."""
    return min(next_boundary(now, interval), last_sweep + timedelta(seconds=sweep))


class Scanner:
    """Dispatches due jobs; safe to run several at once (claims skip locked rows)."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        producer: Producer | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.producer = producer or Producer(settings, client_id="chronoq-scanner")
        # Looked up on every call, so a test's patch of common.infra.clock.utcnow reaches it.
        self.clock = clock or (lambda: wall_clock.utcnow())
        self.totals = DispatchResult()
        self.occurrences_made = 0
        #: While the database was unreachable nobody could extend a lease; leases that ran out
        #: after ``_down_since`` count only once a full lease has passed since it came back.
        self._down_since: datetime | None = None
        self._grace_until: datetime | None = None
        self._last_ok = self.clock()

    @property
    def health(self) -> HealthCheck:
        """Healthy while scans succeed (unhealthy once none has for three sweeps or 30 s)."""

        def check() -> tuple[bool, dict[str, Any]]:
            silent = (self.clock() - self._last_ok).total_seconds()
            bound = max(3 * self.settings.sweep_interval_seconds, 30.0)
            return silent <= bound, {"last_scan_ok_seconds_ago": round(silent, 1), "dispatched": self.totals.published}

        return check

    def scan(self, now: datetime) -> DispatchResult:
        """Claim and publish, batch after batch, every job due before the horizon of ``now``
        plus every in-flight job whose lease ran out.

        When the first batch comes back full, :data:`CLAIMERS` threads work through the rest
        side by side (SKIP LOCKED keeps their claims apart, as it keeps two scanners'): one
        waits for the database while another encodes and sends, which made a 50,000-job
        window about a sixth faster (bench/scanner.py)."""
        horizon = dispatch_horizon(now, self.settings.scan_interval_seconds)
        if not self.stop.is_set():
            self.make_occurrences(now, horizon)
            self.release_stuck(now)
        result = DispatchResult() if self.stop.is_set() else self._batch(now, horizon)
        if self._more(result):
            with ThreadPoolExecutor(CLAIMERS, thread_name_prefix="claimer") as pool:
                for drained in pool.map(lambda _: self._drain(now, horizon), range(CLAIMERS)):
                    result += drained
        self.totals += result
        return result

    def release_stuck(self, now: datetime) -> int:
        """Advance workflows with nothing under way (common.core.workflow_release.sweep): the
        tasks it releases are due now, so this scan dispatches them. Normally there are none:
        every settle releases in its own transaction."""
        with session_scope(self.settings) as session:
            changed = workflow_release.sweep(session, now=now)
            workflow_release.released(session)  # claimed below, by this scan
        return changed

    def make_occurrences(self, now: datetime, horizon: datetime) -> schedules.Made:
        """Make the occurrences of every schedule due before ``horizon``, in the window this
        scan dispatches, so they are claimed by the same scan (no leader: schedules another
        scanner holds are skipped, and each occurrence's identity is unique)."""
        made = schedules.Made()
        for _ in range(OCCURRENCE_PASSES):
            with session_scope(self.settings) as session:
                step = schedules.make_due(session, now=now, horizon=horizon)
            made += step
            if not step.more or self.stop.is_set():
                break
        if made.occurrences or made.caught_up:
            log.info("made %d occurrences of %d schedules due before %s (%d missed ones caught up)",
                     made.occurrences, made.schedules, horizon.isoformat(timespec="seconds"), made.caught_up)
        self.occurrences_made += made.occurrences
        return made

    def _drain(self, now: datetime, horizon: datetime) -> DispatchResult:
        """Batches until one says there is no more to do."""
        result = DispatchResult()
        while True:
            batch = self._batch(now, horizon)
            result += batch
            if not self._more(batch):
                return result

    def _more(self, batch: DispatchResult) -> bool:
        """Whether to claim again after ``batch``: it was full (more may be due), Kafka took it
        all (else try again at the next wake), and the scanner is not stopping."""
        claimed = batch.published + batch.unpublished + batch.exhausted
        return claimed >= self.settings.scan_batch_size and not batch.unpublished and not self.stop.is_set()

    def _batch(self, now: datetime, horizon: datetime) -> DispatchResult:
        """Claim one batch in one transaction, then publish it."""
        return dispatch(
            self.settings,
            self.producer,
            lambda session: store.claim_due(
                session,
                now=now,
                horizon=horizon,
                lease=self.settings.lease_seconds,
                limit=self.settings.scan_batch_size,
                expired_before=self._expired_before(now),
            ),
            now=now,
        )

    def _expired_before(self, now: datetime) -> datetime:
        if self._grace_until is not None and now < self._grace_until and self._down_since is not None:
            return min(now, self._down_since)
        return now

    def run(self) -> None:
        """Scan at once (overdue jobs run as soon as chronoq is back), then at every window
        boundary and sweep, until ``stop`` is set."""
        interval = self.settings.scan_interval_seconds
        # Capped low (retry.LOOP): a scan is cheap, and jobs wait for the first one that succeeds.
        pacer = Pacer(LOOP, self.stop, log)
        last_sweep = self.clock()
        log.info(
            "scanner started: window %.0fs, sweep every %.0fs, lease %.0fs",
            interval, self.settings.sweep_interval_seconds, self.settings.lease_seconds,
        )
        self._last_ok = last_sweep
        maintenance = Maintenance(self.settings, self.stop, self.clock).start()
        while not self.stop.is_set():
            now = self.clock()
            started = time.monotonic()
            try:
                with session_scope(self.settings) as session:
                    metrics.measure_backlog(session, now)
                result = self.scan(now)
            except (DatabaseUnavailable, BrokerUnavailable) as exc:
                metrics.failed_pass()
                if isinstance(exc, DatabaseUnavailable) and self._down_since is None:
                    # Nobody could extend a lease since the last scan that reached the database.
                    self._down_since = self._last_ok
                    self._grace_until = None
                pacer.failed(f"scan failed: {exc}")
                continue
            self._last_ok = now
            pacer.succeeded()
            if self._down_since is not None and self._grace_until is None:
                self._grace_until = now + timedelta(seconds=self.settings.lease_seconds)
                log.info("database back: leases that ran out since %s count from %s",
                         self._down_since.isoformat(timespec="seconds"),
                         self._grace_until.isoformat(timespec="seconds"))
            elif self._grace_until is not None and now >= self._grace_until:
                self._down_since = self._grace_until = None
            last_sweep = now
            elapsed = time.monotonic() - started
            metrics.observe_pass(result, elapsed, self.clock().timestamp())
            if result.published or result.unpublished or result.exhausted:
                log.info(
                    "dispatched %d jobs due before %s in %.3fs (%.0f/s); %d put back, %d failed as lost",
                    result.published, dispatch_horizon(now, interval).isoformat(timespec="seconds"),
                    elapsed, result.published / elapsed if elapsed else 0.0, result.unpublished, result.exhausted,
                )
            wake = next_wake(self.clock(), interval, self.settings.sweep_interval_seconds, last_sweep)
            self.stop.wait(max(0.0, (wake - self.clock()).total_seconds()))
        maintenance.join()
        self.producer.close()
        log.info("scanner stopped; %d jobs dispatched in all", self.totals.published)
