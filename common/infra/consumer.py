"""The consumer loop both Kafka consumers share: one thread polls, hands each batch to a
handler, and commits the offsets only once the handler says the batch is recorded. Broker
errors are logged and retried with backoff; the loop never dies of them."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

from common.infra.config import Settings
from common.infra.errors import BrokerUnavailable
from common.infra.kafka import BrokerError, ensure_topics, make_consumer

log = logging.getLogger(__name__)

#: A handler records a batch and returns True, or returns False when it was stopped before
#: recording everything (then nothing is committed and the batch is delivered again).
BatchHandler = Callable[[Sequence[Any]], bool]


def _settle_before_leaving(consumer: Any, timeout: float) -> bool:
    """Poll ``consumer`` until its group membership is stable (no join or sync in progress), at
    most ``timeout`` seconds; True when it is. Records polled meanwhile are dropped uncommitted."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "stable"):
        return True

    def stable() -> bool:
        return bool(coordinator.stable()) and not coordinator.need_rejoin()

    deadline = time.monotonic() + timeout
    if stable():
        return True
    log.info("leaving the consumer group once its rebalance in progress is over (at most %.0fs)", timeout)
    while time.monotonic() < deadline:
        try:
            consumer.poll(timeout_ms=200, max_records=1)  # drives the join; records are not taken
        except Exception as exc:  # noqa: BLE001 - a broker error: leave as best we can
            log.warning("while waiting for the rebalance to finish: %r", exc)
            return False
        if stable():
            return True
    log.warning("the group's rebalance did not finish within %.0fs; leaving it anyway", timeout)
    return False


class ConsumerLoop:
    """Poll ``topic`` as a member of ``group_id`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        group_id: str,
        handle: BatchHandler,
        stop: threading.Event,
        max_records: int = 500,
        client_id: str = "chronoq",
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.handle = handle
        self.stop = stop
        self.max_records = max_records
        self.client_id = client_id
        self.assigned = threading.Event()  # set once the group gave this member partitions

    def run(self) -> None:
        """Consume until ``stop`` is set. Broker errors are retried inside; anything unexpected
        closes the consumer uncommitted and starts over after a pause, so a consumer never
        silently stops consuming."""
        while not self.stop.is_set():
            try:
                self._consume()
                return
            except Exception:  # noqa: BLE001 - logged; the loop must outlive it
                log.exception("the consumer loop of %s failed; restarting it in 2s", self.topic)
                self.stop.wait(2.0)

    def _consume(self) -> None:
        backoff = 0.5
        consumer = None
        try:
            while not self.stop.is_set():
                if consumer is None:
                    try:
                        # A broker that lost its state (tansu keeps memory only) comes back
                        # without topics; whoever reconnects first creates them again.
                        ensure_topics(self.settings)
                        consumer = make_consumer(self.settings, self.topic, self.group_id, self.client_id)
                    except BrokerUnavailable as exc:
                        backoff = self._wait(backoff, f"cannot join {self.group_id}: {exc}")
                        continue
                try:
                    polled = consumer.poll(timeout_ms=500, max_records=self.max_records)
                except BrokerError as exc:
                    # Start over with a new consumer: its positions come from the broker's
                    # committed offsets again, not from memory that may describe a log the
                    # broker no longer has.
                    self._close(consumer)
                    consumer = None
                    backoff = self._wait(backoff, f"poll of {self.topic} failed: {exc!r}")
                    continue
                backoff = 0.5
                if consumer.assignment():
                    self.assigned.set()
                records = [record for batch in polled.values() for record in batch]
                if not records:
                    continue
                try:
                    recorded = self.handle(records)
                except Exception:  # noqa: BLE001 - a bug in one batch must not end the loop
                    log.exception(
                        "handling %d messages of %s failed; leaving them uncommitted and rejoining",
                        len(records), self.topic,
                    )
                    self._close(consumer)  # positions fall back to the last commit
                    consumer = None
                    backoff = self._wait(backoff, "handler failed")
                    continue
                if not recorded:
                    log.info("stopped before recording %d messages; they stay uncommitted", len(records))
                    break
                try:
                    consumer.commit()
                except BrokerError as exc:
                    log.warning(
                        "commit on %s failed (%r); those %d messages will be delivered again and applied "
                        "idempotently", self.topic, exc, len(records),
                    )
        finally:
            if consumer is not None:
                self._close(consumer)
            log.info("consumer of %s (group %s) closed", self.topic, self.group_id)

    def _close(self, consumer: Any) -> None:
        if self.stop.is_set():
            # Leave only outside a rebalance: a member that leaves while its JoinGroup is
            # pending may be elected leader and be gone before it sends the assignment. Kafka
            # then starts another rebalance; the tansu coordinator (0.6, the local and test
            # broker) keeps the departed leader for good and the group never consumes again.
            _settle_before_leaving(consumer, self.settings.kafka_session_timeout_ms / 1000)
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - a consumer of a dead broker may fail to close
            log.warning("closing the consumer failed: %r", exc)

    def _wait(self, backoff: float, why: str) -> float:
        log.warning("%s; retrying in %.1fs", why, backoff)
        self.stop.wait(backoff)
        return min(backoff * 2, 10.0)
