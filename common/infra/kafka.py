"""The one Kafka producer factory, consumer factory and topic set-up. kafka-python errors are
wrapped here into :class:`BrokerUnavailable`; services never catch a kafka-python type. Every
client is built with :func:`security_options` (SASL and TLS for managed Kafka services)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownProducerIdError
from kafka.partitioner.default import murmur2

from common.infra.config import PREFIX, Settings
from common.infra.errors import BrokerUnavailable, ConfigError
from common.infra.deadletter import DeadLetter

log = logging.getLogger(__name__)

#: kafka-python's base error, re-exported so services can say "any broker error" without
#: importing the driver.
BrokerError = KafkaError

#: Seconds a producer waits after failing to reach the broker before it tries again.
RECONNECT_COOLDOWN = 5.0

#: Record headers as kafka-python takes them: (name, bytes) pairs.
Headers = list[tuple[str, bytes]]
#: One record to publish: (key, value), or (key, value, headers).
Record = tuple[bytes, bytes] | tuple[bytes, bytes, Headers | None]

M = TypeVar("M")


def records(messages: Sequence[M], encode: Callable[[M], bytes], headers: Sequence[Headers | None] | None = None,
            ) -> list[Record]:
    """(key, value) of each message, keyed by its ``key``; with ``headers`` (tracing on, see
    common/infra/tracing.py), (key, value, headers)."""
    if headers is None:
        return [(m.key, encode(m)) for m in messages]  # type: ignore[attr-defined]
    return [(m.key, encode(m), h) for m, h in zip(messages, headers, strict=True)]  # type: ignore[attr-defined]


#: Values of CHRONOQ_KAFKA_SECURITY_PROTOCOL (checked at every service's start by
#: :func:`common.infra.lifecycle.load_or_exit`, through :func:`security_options`).
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

#: SASL mechanisms chronoq configures: each takes a user name and a password. (GSSAPI and
#: OAUTHBEARER need settings chronoq does not have.)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: kafka-python options whose values are credentials; see :class:`_RedactCredentials`.
_SECRET_OPTIONS = frozenset({"sasl_plain_password", "ssl_password"})


def _servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]


def security_options(settings: Settings) -> dict[str, Any]:
    """The kafka-python keyword arguments for ``CHRONOQ_KAFKA_SECURITY_PROTOCOL`` and its
    SASL/TLS settings; only what is set (PLAINTEXT: none). Raises :class:`ConfigError` naming
    the variable when a setting is missing, unknown, or would be silently ignored."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ConfigError(
            f"{PREFIX}KAFKA_SECURITY_PROTOCOL: must be one of {', '.join(KAFKA_PROTOCOLS)}, "
            f"got {settings.kafka_security_protocol!r}"
        )
    uses_sasl = protocol.startswith("SASL_")
    uses_tls = protocol.endswith("SSL")
    options: dict[str, Any] = {}
    if protocol != "PLAINTEXT":
        options["security_protocol"] = protocol

    sasl = {
        "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    if uses_sasl:
        for name, value in sasl.items():
            if not value:
                raise ConfigError(f"{PREFIX}{name}: required with {PREFIX}KAFKA_SECURITY_PROTOCOL={protocol}")
        mechanism = settings.kafka_sasl_mechanism.strip().upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"{PREFIX}KAFKA_SASL_MECHANISM: must be one of {', '.join(SASL_MECHANISMS)}, "
                f"got {settings.kafka_sasl_mechanism!r}"
            )
        options["sasl_mechanism"] = mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    else:
        # Credentials that would be dropped usually mean a forgotten protocol: say so now
        # rather than let the client fail later with an obscure broker disconnect.
        _refuse_unused(sasl, protocol, "a SASL protocol (SASL_SSL or SASL_PLAINTEXT)")

    tls = {
        "KAFKA_SSL_CAFILE": ("ssl_cafile", settings.kafka_ssl_cafile),
        "KAFKA_SSL_CERTFILE": ("ssl_certfile", settings.kafka_ssl_certfile),
        "KAFKA_SSL_KEYFILE": ("ssl_keyfile", settings.kafka_ssl_keyfile),
    }
    if uses_tls:
        if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
            raise ConfigError(f"{PREFIX}KAFKA_SSL_KEYFILE: set, but {PREFIX}KAFKA_SSL_CERTFILE is not (the key's certificate)")
        for name, (option, path) in tls.items():
            if path:
                if not os.path.isfile(path):
                    raise ConfigError(f"{PREFIX}{name}: no such file: {path!r}")
                options[option] = path
        # Without a CA file kafka-python verifies the brokers against the system's CA bundle,
        # which is what managed Kafka services with public certificates need.
    else:
        _refuse_unused({name: path for name, (_option, path) in tls.items()}, protocol, "a TLS protocol (SSL or SASL_SSL)")
    return options


def _refuse_unused(values: Mapping[str, str], protocol: str, needs: str) -> None:
    unused = [name for name, value in values.items() if value]
    if unused:
        raise ConfigError(
            f"{PREFIX}{unused[0]}: set, but {PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} does not use it "
            f"(it needs {needs})"
        )


class _RedactCredentials(logging.Filter):
    """Masks credentials in kafka-python's own log records: KafkaAdminClient logs every
    keyword argument, the SASL password included, at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = _redacted(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) if isinstance(arg, Mapping) else arg for arg in record.args)
        return True


def _redacted(options: Mapping[str, Any]) -> Mapping[str, Any]:
    if not _SECRET_OPTIONS.intersection(options):
        return options
    return {key: ("***" if key in _SECRET_OPTIONS and value else value) for key, value in options.items()}


# A filter on a logger sees only the records made through that very logger, so it goes on
# each kafka-python module that may log its configuration, not on the "kafka" parent.
for _name in ("kafka.admin.client", "kafka.producer.kafka", "kafka.consumer.group"):
    logging.getLogger(_name).addFilter(_RedactCredentials())


class Producer:
    """A thread-safe producer that rebuilds its KafkaProducer after a fatal error.

    Idempotence is off: after a broker loses its state an idempotent producer fails every send
    with ``UnknownProducerIdError`` until it is recreated, and chronoq already tolerates a
    duplicate message (dispatch tokens and monotonic updates)."""

    def __init__(self, settings: Settings, client_id: str = "chronoq") -> None:
        self._settings = settings
        self._client_id = client_id
        # Worked out now so that a misconfigured service fails at start, not at its first send.
        self._security = security_options(settings)
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
                        bootstrap_timeout_ms=self._settings.kafka_connect_timeout_ms,
                        request_timeout_ms=10000,
                        delivery_timeout_ms=20000,
                        max_request_size=max(self._settings.max_message_bytes * 2, 1_048_576),
                        **self._security,
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

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers | None = None) -> Any:
        """Queue one message; returns kafka-python's future (``.get(timeout)`` waits for the ack)."""
        try:
            return self._get().send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:
            self._reset()
            raise BrokerUnavailable(f"cannot publish to {topic}: {exc}") from exc

    def send_all(self, topic: str, messages: Sequence[Record], timeout: float = 15.0) -> list[bool]:
        """Publish many records (:func:`records`) and wait for each acknowledgement; returns
        which were acked.

        Sends them all, then flushes once. Each key goes to the partition kafka-python's
        default partitioner would choose (murmur2 of the key, like every Kafka client), worked
        out here once per message: the partitioner also re-reads the cluster metadata on every
        send (about a tenth of the CPU time of publishing a large window). A failure is logged
        once, with counts, not once per message."""
        futures: list[Any] = [None] * len(messages)
        try:
            producer = self._get()
            partitions = sorted(producer.partitions_for(topic))
            for i, (key, value, *headers) in enumerate(messages):
                partition = None if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
                futures[i] = producer.send(topic, key=key, value=value, partition=partition,
                                           headers=headers[0] if headers else None)
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
    security = security_options(settings)
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
            # How long a fetch may wait for records before the broker answers. tansu answers an
            # empty fetch only at this bound, and a record produced meanwhile waits for it: with
            # kafka-python's 500 ms a workflow task released due now started 173 ms (p50) after
            # its claim, with 50 ms 19 ms (bench/workflows.py). Idle, it is 20 fetches a second.
            fetch_max_wait_ms=50,
            **security,
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc


def topic_size(settings: Settings, topic: str, timeout_ms: int | None = None) -> int:
    """How many messages ``topic`` holds now: end offsets minus beginning offsets, summed over
    its partitions (0 for a topic that does not exist yet). Reads offsets only, joins no group.
    ``timeout_ms``: for reaching the broker (default CHRONOQ_KAFKA_CONNECT_TIMEOUT_MS)."""
    timeout_ms = timeout_ms if timeout_ms is not None else settings.kafka_connect_timeout_ms
    try:
        consumer = KafkaConsumer(bootstrap_servers=_servers(settings), client_id="chronoq-offsets", group_id=None,
                                 enable_auto_commit=False, bootstrap_timeout_ms=timeout_ms,
                                 request_timeout_ms=max(timeout_ms, 1000) + 500, **security_options(settings))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        numbers = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        if not partitions:
            return 0
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        return sum(max(0, ends[p] - starts[p]) for p in partitions)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read the offsets of {topic}: {exc}") from exc
    finally:
        consumer.close()


def ensure_topics(settings: Settings) -> None:
    """Create chronoq's three topics if they do not exist yet."""
    security = security_options(settings)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=_servers(settings), client_id="chronoq-admin",
            bootstrap_timeout_ms=settings.kafka_connect_timeout_ms, **security
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
