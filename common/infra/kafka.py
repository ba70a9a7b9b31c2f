"""The one Kafka producer factory, consumer factory and topic set-up. kafka-python errors are
wrapped here into :class:`BrokerUnavailable`; services never catch a kafka-python type."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownProducerIdError
from kafka.partitioner.default import murmur2

from common.infra.config import Settings
from common.infra.errors import BrokerUnavailable
from common.infra.deadletter import DeadLetter

log = logging.getLogger(__name__)

#: kafka-python's base error, re-exported so services can say "any broker error" without
#: importing the driver.
BrokerError = KafkaError

#: Seconds a producer waits after failing to reach the broker before it tries again.
RECONNECT_COOLDOWN = 5.0


def _servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]


class Producer:
    """A thread-safe producer that rebuilds its KafkaProducer after a fatal error.

    Idempotence is off: after a broker loses its state an idempotent producer fails every send
    with ``UnknownProducerIdError`` until it is recreated, and chronoq already tolerates a
    duplicate message (dispatch tokens and monotonic updates)."""

    def __init__(self, settings: Settings, client_id: str = "chronoq") -> None:
        self._settings = settings
        self._client_id = client_id
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._down_until = 0.0  # monotonic time before which we do not try to connect again

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                if time.monotonic() < self._down_until:
                    # The broker was unreachable a moment ago: answer at once rather than make
                    # every caller (an API request, say) wait for another connection timeout.
                    raise BrokerUnavailable(f"Kafka at {self._settings.kafka_bootstrap} is unreachable (retrying soon)")
                try:
                    # Topics are created by chronoq with their partition count, never implicitly
                    # by a send (a broker that restarted empty would make them with its defaults).
                    ensure_topics(self._settings)
                    self._producer = KafkaProducer(
                        bootstrap_servers=_servers(self._settings),
                        client_id=self._client_id,
                        acks="all",
                        enable_idempotence=False,
                        allow_auto_create_topics=False,
                        linger_ms=2,
                        retries=5,
                        max_block_ms=5000,
                        # Fail fast when the broker is down: callers fall back (the job stays
                        # in the database for the scanner) rather than hold a request for 30 s.
                        bootstrap_timeout_ms=3000,
                        request_timeout_ms=10000,
                        delivery_timeout_ms=20000,
                        max_request_size=max(self._settings.max_message_bytes * 2, 1_048_576),
                    )
                except (KafkaError, BrokerUnavailable) as exc:
                    self._down_until = time.monotonic() + RECONNECT_COOLDOWN
                    raise BrokerUnavailable(f"cannot reach Kafka at {self._settings.kafka_bootstrap}: {exc}") from exc
            return self._producer

    def _reset(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # closing a broken producer may fail too; it is being replaced
                log.debug("closing a broken producer failed", exc_info=True)

    def send(self, topic: str, key: bytes, value: bytes) -> Any:
        """Queue one message; returns kafka-python's future (``.get(timeout)`` waits for the ack)."""
        try:
            return self._get().send(topic, key=key, value=value)
        except KafkaError as exc:
            self._reset()
            raise BrokerUnavailable(f"cannot publish to {topic}: {exc}") from exc

    def send_all(self, topic: str, messages: list[tuple[bytes, bytes]], timeout: float = 15.0) -> list[bool]:
        """Publish many messages and wait for each acknowledgement; returns which were acked.

        Sends them all, then flushes once. Each key goes to the partition kafka-python's
        default partitioner would choose (murmur2 of the key, like every Kafka client), worked
        out here once per message: the partitioner also re-reads the cluster metadata on every
        send (about a tenth of the CPU time of publishing a large window). A failure is logged
        once, with counts, not once per message."""
        futures: list[Any] = [None] * len(messages)
        try:
            producer = self._get()
            partitions = sorted(producer.partitions_for(topic))
            for i, (key, value) in enumerate(messages):
                partition = None if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
                futures[i] = producer.send(topic, key=key, value=value, partition=partition)
        except (KafkaError, BrokerUnavailable) as exc:
            if isinstance(exc, KafkaError):
                self._reset()
            log.warning("publish to %s failed after %d of %d messages: %s",
                        topic, sum(f is not None for f in futures), len(messages), exc)
        self.flush(timeout)
        acked = []
        failures: dict[str, int] = {}
        for future in futures:
            ok = False
            if future is not None:
                try:
                    future.get(timeout=timeout)
                    ok = True
                except UnknownProducerIdError:
                    self._reset()
                except KafkaError as exc:
                    failures[repr(exc)] = failures.get(repr(exc), 0) + 1
            acked.append(ok)
        for reason, count in failures.items():
            log.warning("publish to %s: %d messages not acknowledged: %s", topic, count, reason)
        return acked

    def send_and_wait(self, topic: str, key: bytes, value: bytes, timeout: float = 15.0) -> None:
        """Publish one message and wait for the broker's acknowledgement."""
        if not self.send_all(topic, [(key, value)], timeout)[0]:
            raise BrokerUnavailable(f"{topic}: message for {key.decode(errors='replace')} not acknowledged")

    def dead_letter(self, letter: DeadLetter, wait: bool = False) -> bool:
        """Publish to the dead-letter topic (``wait``: until acknowledged); a failure is logged
        with the letter's reason, never raised. True when queued (or acknowledged)."""
        key = (letter.job_id or "").encode()
        try:
            if wait:
                self.send_and_wait(self._settings.topic_dlq, key, letter.encode(), timeout=10.0)
            else:
                self.send(self._settings.topic_dlq, key, letter.encode())
            return True
        except BrokerUnavailable as exc:
            log.error(
                "could not dead-letter (%s; %s[%s]@%s, job %s): %s",
                letter.reason, letter.source_topic, letter.partition, letter.offset, letter.job_id, exc,
            )
            return False

    def flush(self, timeout: float = 15.0) -> None:
        producer = self._producer
        if producer is None:
            return
        try:
            producer.flush(timeout=timeout)
        except KafkaError as exc:
            log.warning("flush failed: %s", exc)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout)


def make_consumer(settings: Settings, topic: str, group_id: str, client_id: str = "chronoq") -> KafkaConsumer:
    """A consumer-group member on ``topic`` with manual commits (offsets are committed only
    after the work they stand for is recorded)."""
    try:
        return KafkaConsumer(
            topic,
            bootstrap_servers=_servers(settings),
            client_id=client_id,
            group_id=group_id,
            # Topics come from ensure_topics with their partition count; a member of a broker
            # that restarted empty must not create them with the broker's defaults.
            allow_auto_create_topics=False,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(500, settings.kafka_session_timeout_ms // 5),
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            max_partition_fetch_bytes=max(settings.max_message_bytes * 2, 1_048_576),
            request_timeout_ms=max(settings.kafka_session_timeout_ms + 5000, 30000),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc


def ensure_topics(settings: Settings) -> None:
    """Create chronoq's three topics if they do not exist yet."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=_servers(settings), client_id="chronoq-admin", bootstrap_timeout_ms=3000
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, 1) for name in settings.topics if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them first
            log.info("created topics %s", ", ".join(t.name for t in missing))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        admin.close()
