"""Kafka SASL/TLS: the CHRONOQ_KAFKA_* security settings become kafka-python keyword arguments,
every client chronoq builds gets them, a missing credential is refused by name, and the SASL
password never reaches a log. No broker: the kafka-python classes are replaced by recorders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConfigurationError

from common.infra import kafka as kafka_mod
from common.infra.config import Settings, load_settings
from common.infra.errors import ConfigError
from common.infra.kafka import Producer, ensure_topics, make_consumer, security_options

PASSWORD = "pw-that-must-never-be-logged"


def _settings(**env: str) -> Settings:
    return load_settings({f"CHRONOQ_{name}": value for name, value in env.items()})


def _sasl(**extra: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "chronoq",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        **extra,
    }


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file where a certificate would be (only its existence is checked here)."""
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


# -- the mapping ------------------------------------------------------------------------------


def test_plaintext_adds_nothing() -> None:
    assert security_options(_settings()) == {}
    assert security_options(_settings(KAFKA_SECURITY_PROTOCOL="plaintext")) == {}


def test_sasl_ssl_maps_every_setting(pem: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("cert")
    key.write_text("key")
    options = security_options(_settings(**_sasl(
        KAFKA_SSL_CAFILE=str(pem), KAFKA_SSL_CERTFILE=str(cert), KAFKA_SSL_KEYFILE=str(key),
    )))
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "chronoq",
        "sasl_plain_password": PASSWORD,
        "ssl_cafile": str(pem),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }


def test_protocol_and_mechanism_are_case_insensitive() -> None:
    options = security_options(_settings(**_sasl(KAFKA_SECURITY_PROTOCOL="sasl_plaintext", KAFKA_SASL_MECHANISM="plain")))
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "PLAIN"
    assert not any(key.startswith("ssl_") for key in options)


def test_ssl_without_ca_file_uses_the_system_bundle() -> None:
    # Managed services with public certificates need no CA file: kafka-python then loads the
    # system's default CAs and still checks the broker's host name.
    assert security_options(_settings(KAFKA_SECURITY_PROTOCOL="SSL")) == {"security_protocol": "SSL"}


def test_option_names_are_ones_kafka_python_accepts(pem: Path) -> None:
    """The names come from kafka-python itself, so a rename in a new kafka-python fails here."""
    options = security_options(_settings(**_sasl(KAFKA_SSL_CAFILE=str(pem), KAFKA_SSL_CERTFILE=str(pem))))
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(options) - set(client.DEFAULT_CONFIG)
        assert not unknown, f"{client.__name__} does not accept {sorted(unknown)}"


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("missing", ["KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_without_a_credential_names_the_variable(protocol: str, missing: str) -> None:
    env = _sasl(KAFKA_SECURITY_PROTOCOL=protocol)
    del env[missing]
    with pytest.raises(ConfigError) as caught:
        security_options(_settings(**env))
    assert str(caught.value).startswith(f"CHRONOQ_{missing}:")
    assert protocol in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("mechanism", ["GSSAPI", "OAUTHBEARER", "SCRAM-SHA-1"])
def test_mechanisms_without_a_password_flow_are_refused(mechanism: str) -> None:
    with pytest.raises(ConfigError, match=r"^CHRONOQ_KAFKA_SASL_MECHANISM: must be one of PLAIN, SCRAM-SHA-256"):
        security_options(_settings(**_sasl(KAFKA_SASL_MECHANISM=mechanism)))


@pytest.mark.parametrize("name", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM"])
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_sasl_setting_without_a_sasl_protocol_is_refused(name: str, protocol: str) -> None:
    # Forgetting CHRONOQ_KAFKA_SECURITY_PROTOCOL would otherwise drop the credentials silently.
    with pytest.raises(ConfigError) as caught:
        security_options(_settings(KAFKA_SECURITY_PROTOCOL=protocol, **{name: "x"}))
    assert str(caught.value).startswith(f"CHRONOQ_{name}: set, but CHRONOQ_KAFKA_SECURITY_PROTOCOL={protocol}")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_file_without_a_tls_protocol_is_refused(protocol: str, pem: Path) -> None:
    env = _sasl(KAFKA_SECURITY_PROTOCOL=protocol) if protocol.startswith("SASL") else {}
    with pytest.raises(ConfigError, match=r"^CHRONOQ_KAFKA_SSL_CAFILE: set, but"):
        security_options(_settings(**env, KAFKA_SSL_CAFILE=str(pem)))


def test_missing_tls_file_names_the_variable(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError, match=r"^CHRONOQ_KAFKA_SSL_CAFILE: no such file"):
        security_options(_settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(absent)))


def test_key_without_its_certificate_is_refused(pem: Path) -> None:
    with pytest.raises(ConfigError, match=r"^CHRONOQ_KAFKA_SSL_KEYFILE: .*CHRONOQ_KAFKA_SSL_CERTFILE"):
        security_options(_settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEYFILE=str(pem)))


def test_unknown_protocol_in_settings_built_directly_is_refused() -> None:
    # Settings(...) built in code, as load_settings builds them: security_options is the check.
    with pytest.raises(ConfigError, match=r"^CHRONOQ_KAFKA_SECURITY_PROTOCOL:"):
        security_options(Settings(kafka_security_protocol="TLS"))


# -- every factory passes it ------------------------------------------------------------------


class _Recorder:
    """Stands in for one kafka-python class: records each construction's keyword arguments."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]], name: str) -> None:
        self.calls = calls
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((self.name, kwargs))
        return _FakeClient()


class _FakeClient:
    """Enough of a producer / consumer / admin client for the factories to finish."""

    def list_topics(self) -> list[str]:
        return ["scheduled-jobs-topic", "scheduled-updated-jobs-topic", "scheduled-jobs-dlq"]

    def create_topics(self, topics: list[Any]) -> None:  # pragma: no cover - topics all exist
        raise AssertionError("no topic is missing")

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka_mod, name, _Recorder(calls, name))
    return calls


def test_every_client_gets_the_security_options(constructed: list[tuple[str, dict[str, Any]]], pem: Path) -> None:
    settings = _settings(**_sasl(KAFKA_SSL_CAFILE=str(pem)))
    expected = security_options(settings)

    producer = Producer(settings, client_id="test")
    producer._get()  # builds the admin client (ensure_topics), then the producer
    make_consumer(settings, settings.topic_jobs, "test-group")
    ensure_topics(settings)

    built = [name for name, _kwargs in constructed]
    assert set(built) == {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
    for name, kwargs in constructed:
        passed = {key: kwargs.get(key) for key in expected}
        assert passed == expected, name
        assert kwargs["bootstrap_servers"] == ["127.0.0.1:9092"], name


def test_plaintext_clients_are_built_as_before(constructed: list[tuple[str, dict[str, Any]]]) -> None:
    settings = _settings()
    Producer(settings)._get()
    make_consumer(settings, settings.topic_jobs, "test-group")
    assert len(constructed) == 3
    for name, kwargs in constructed:
        assert not {key for key in kwargs if key.startswith(("sasl_", "ssl_", "security_"))}, name


def test_misconfigured_producer_fails_when_made_not_at_first_send(constructed: list[tuple[str, dict[str, Any]]]) -> None:
    settings = _settings(**{k: v for k, v in _sasl().items() if k != "KAFKA_SASL_PASSWORD"})
    with pytest.raises(ConfigError, match="^CHRONOQ_KAFKA_SASL_PASSWORD:"):
        Producer(settings)
    with pytest.raises(ConfigError, match="^CHRONOQ_KAFKA_SASL_PASSWORD:"):
        make_consumer(settings, settings.topic_jobs, "test-group")
    with pytest.raises(ConfigError, match="^CHRONOQ_KAFKA_SASL_PASSWORD:"):
        ensure_topics(settings)
    assert constructed == []  # nothing tried to connect


# -- the password stays out of logs -----------------------------------------------------------


def test_admin_client_debug_log_masks_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """KafkaAdminClient logs all its keyword arguments at DEBUG before it checks them; an
    unknown option makes it stop right after that line, with no network."""
    caplog.set_level(logging.DEBUG, logger="kafka.admin.client")
    options = security_options(_settings(**_sasl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")))
    with pytest.raises(KafkaConfigurationError):
        KafkaAdminClient(bootstrap_servers=["127.0.0.1:1"], not_an_option=True, **options)
    lines = [r.getMessage() for r in caplog.records if r.name == "kafka.admin.client"]
    assert any("sasl_plain_username" in line and "'***'" in line for line in lines), lines
    assert PASSWORD not in caplog.text


def test_redaction_leaves_other_log_records_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kafka.admin.client")
    logging.getLogger("kafka.admin.client").debug("node %s at %s", 1, {"host": "kafka", "port": 9092})
    assert caplog.records[-1].getMessage() == "node 1 at {'host': 'kafka', 'port': 9092}"
