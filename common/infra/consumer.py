"""The consumer loop both Kafka consumers share. One thread polls; each record is decoded, and
the decoded batch is handed to the service's handler; the offsets are committed only once the
handler says the batch is recorded.

No record can stall a partition: a record that does not decode is dead-lettered at once; when a
batch fails, its records are handled one at a time, and a record that fails
:data:`POISON_TRIES` times alone is dead-lettered with the reason, so the records around it are
processed and the partition moves on. A batch is never retried whole.

No member stays silently outside its group: a member whose group join has not completed within
``CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS`` logs an error naming the group, reports itself stuck
(:class:`~common.infra.health.GroupHealth`), and rejoins as a fresh member."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Generic, Sequence, TypeVar

from common.infra import tracing
from common.infra.deadletter import DeadLetter
from common.infra.config import Settings
from common.infra.errors import BrokerUnavailable, MessageError
from common.infra.health import GroupHealth
from common.infra.kafka import BrokerError, Producer, ensure_topics, make_consumer
from common.infra.retry import LOOP, Backoff, Pacer

log = logging.getLogger(__name__)

M = TypeVar("M")

#: Turns a record's value into a message, or raises (:class:`MessageError` with the reason).
Decode = Callable[[bytes | None, int], M]
#: Records a batch of messages and returns True, or returns False when it was stopped before
#: recording everything (then nothing is committed and the batch is delivered again).
BatchHandler = Callable[[list[M]], bool]

#: Times a record is handled alone before it is dead-lettered as poison.
POISON_TRIES = 3
POISON_PAUSES = Backoff(first=0.2, cap=1.0)


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
    log.warning("the group's rebalance did not finish within %.0fs; closing without leaving it "
                "(the member expires after the session timeout)", timeout)
    return False


def _joined(consumer: Any) -> bool:
    """Whether ``consumer`` has a completed group join (it may still own no partitions: a group
    with more members than partitions leaves some idle)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "stable"):
        return bool(consumer.assignment())
    return bool(coordinator.stable())


#: Seconds between two measures of a member's lag.
LAG_EVERY = 1.0


def consumer_lag(consumer: Any) -> int | None:
    """High-water mark minus position, summed over ``consumer``'s assigned partitions, as its
    last fetch responses told them; None when not known yet (no fetch, no position)."""
    try:
        total, known = 0, False
        for partition in consumer.assignment() or ():
            high = consumer.highwater(partition)
            position = consumer._subscription.assignment[partition].position
            if high is None or position is None:
                continue
            total += max(0, high - position.offset)
            known = True
        return total if known else None
    except Exception:  # noqa: BLE001 - a rebalance moved the partitions meanwhile: next time
        return None


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MessageError) else f"{type(exc).__name__}: {exc}"


class ConsumerLoop(Generic[M]):
    """Poll ``topic`` as a member of ``group_id`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        group_id: str,
        decode: Decode[M],
        handle: BatchHandler[M],
        stop: threading.Event,
        producer: Producer,
        max_records: int = 500,
        client_id: str = "chronoq",
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.decode = decode
        self.handle = handle
        self.stop = stop
        self.producer = producer
        self.max_records = max_records
        self.client_id = client_id
        self.assigned = threading.Event()  # set once the group gave this member partitions
        self.health = GroupHealth(group_id, topic)
        self._idle_logged = False
        self._lag_due = 0.0

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
        pacer = Pacer(LOOP, self.stop, log)
        consumer = None
        member_since = time.monotonic()
        try:
            while not self.stop.is_set():
                if consumer is None:
                    try:
                        # A broker that lost its state (tansu keeps memory only) comes back
                        # without topics; whoever reconnects first creates them again.
                        ensure_topics(self.settings)
                        consumer = make_consumer(self.settings, self.topic, self.group_id, self.client_id)
                        member_since = time.monotonic()
                    except BrokerUnavailable as exc:
                        pacer.failed(f"cannot join {self.group_id}: {exc}")
                        continue
                try:
                    polled = consumer.poll(timeout_ms=500, max_records=self.max_records)
                except BrokerError as exc:
                    # Start over with a new consumer: its positions come from the broker's
                    # committed offsets again, not from memory that may describe a log the
                    # broker no longer has.
                    self._close(consumer)
                    consumer = None
                    pacer.failed(f"poll of {self.topic} failed: {exc!r}")
                    continue
                pacer.succeeded()
                self._measure_lag(consumer)
                if self._stuck(consumer, member_since):
                    self._close(consumer, leave=False)
                    consumer = None
                    continue
                records = [record for batch in polled.values() for record in batch]
                if not records:
                    continue
                if not self._process(records):
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

    def _measure_lag(self, consumer: Any) -> None:
        """At most once a second: records on this member's partitions not yet fetched, from what
        the last fetches said (no request of its own)."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_EVERY
        lag = consumer_lag(consumer)
        if lag is not None:
            self.health.behind(lag)

    # -- membership -------------------------------------------------------------------------

    def _stuck(self, consumer: Any, member_since: float) -> bool:
        """Track the member's join; True when this member (created at ``member_since``) has
        not joined within the bound and should be replaced by a fresh one."""
        now = time.monotonic()
        if _joined(consumer):
            partitions = len(consumer.assignment())
            if self.health.stuck or (self.health.unstable_for(now) > self.settings.group_join_timeout_seconds):
                log.info("group %s: joined after %.0fs; %d partitions", self.group_id, self.health.unstable_for(now), partitions)
            self.health.stable(partitions)
            if partitions:
                self.assigned.set()
                self._idle_logged = False
            elif not self._idle_logged:
                self._idle_logged = True
                log.info(
                    "group %s: joined, but given no partition of %s (more members than partitions); "
                    "this member stays idle until a rebalance gives it one", self.group_id, self.topic,
                )
            return False
        unstable = self.health.unstable(now)
        bound = self.settings.group_join_timeout_seconds
        # Counted from this member's creation too: a broker that was away is not a stuck group.
        if min(unstable, now - member_since) <= bound:
            return False
        self.health.gave_up_join()
        log.error(
            "group %s on %s: this member's join has not completed for %.0fs (CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS=%g); "
            "it consumes nothing meanwhile. Rejoining as a fresh member (attempt %d). If this repeats, "
            "inspect the group on the broker (kafka-consumer-groups.sh --describe --group %s); a group "
            "that never settles can be deleted once its members are stopped, or the deployment given a new "
            "CHRONOQ_GROUP_PREFIX (its members then start from the earliest offsets; updates are idempotent).",
            self.group_id, self.topic, unstable, bound, self.health.rejoins, self.group_id,
        )
        return True

    # -- records ----------------------------------------------------------------------------

    def _process(self, records: Sequence[Any]) -> bool:
        """Decode and handle ``records``; False when stopped before all were recorded."""
        decoded: list[tuple[Any, M]] = []
        traced = tracing.active()
        for record in records:
            try:
                message = self.decode(record.value, self.settings.max_message_bytes)
            except Exception as exc:  # noqa: BLE001 - whatever the bytes do, the record is dead-lettered
                self._dead_letter(record, _reason(exc))
                continue
            # The trace context travels in the record's headers, beside the JSON.
            decoded.append((record, tracing.attach(message, record.headers) if traced else message))
        if not decoded:
            return True
        try:
            return self.handle([message for _, message in decoded])
        except Exception as exc:  # noqa: BLE001 - find the record that breaks the handler
            log.warning(
                "handling %d messages of %s failed (%s); handling them one at a time",
                len(decoded), self.topic, _reason(exc),
            )
        for record, message in decoded:
            if not self._handle_alone(record, message):
                return False
        return True

    def _handle_alone(self, record: Any, message: M) -> bool:
        pacer = Pacer(POISON_PAUSES, self.stop, log)
        for attempt in range(1, POISON_TRIES + 1):
            try:
                return self.handle([message])
            except Exception as exc:  # noqa: BLE001
                error = exc
                if attempt < POISON_TRIES:
                    pacer.failed(f"{self._where(record)}: handler failed on try {attempt} of {POISON_TRIES} ({_reason(exc)})")
                    if self.stop.is_set():
                        return False
        log.error("%s: handler failed %d times; dead-lettered", self._where(record), POISON_TRIES, exc_info=error)
        self._dead_letter(record, f"handler failed {POISON_TRIES} times: {_reason(error)}")
        return True

    def _dead_letter(self, record: Any, reason: str) -> None:
        key = record.key.decode(errors="replace")[:100] if record.key is not None else None
        log.warning("%s sent to %s: %s", self._where(record), self.settings.topic_dlq, reason,
                    extra={"job_id": key} if key else None)
        self.health.dead_letter()
        self.producer.dead_letter(DeadLetter.from_record(record, reason), wait=True)

    @staticmethod
    def _where(record: Any) -> str:
        key = record.key.decode(errors="replace")[:100] if record.key is not None else None
        return f"message at {record.topic}[{record.partition}]@{record.offset} (job {key})"

    def _close(self, consumer: Any, leave: bool = True) -> None:
        if leave:
            # Leave only outside a rebalance: a member that leaves while its JoinGroup is
            # pending may be elected leader and be gone before it sends the assignment. Kafka
            # then starts another rebalance; the tansu coordinator (0.6, the local and test
            # broker) keeps the departed leader for good and the group never consumes again
            # (docs/tansu-group-wedge.md). A member whose session expires instead is handled
            # by both: on a clean stop we wait for the rebalance to settle, on an error we
            # leave only if the membership is stable now, and otherwise go without leaving.
            if self.stop.is_set():
                leave = _settle_before_leaving(consumer, self.settings.kafka_session_timeout_ms / 1000)
            else:
                leave = _joined(consumer)
        if not leave:
            # Give up the member id without a LeaveGroup; the coordinator expires it after
            # the session timeout.
            coordinator = getattr(consumer, "_coordinator", None)
            if coordinator is not None and hasattr(coordinator, "reset_generation"):
                coordinator.reset_generation()
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - a consumer of a dead broker may fail to close
            log.warning("closing the consumer failed: %r", exc)
