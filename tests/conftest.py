"""Shared fixtures: a PostgreSQL database per test run (migrated once, emptied between tests),
a tansu broker per session, and settings that nothing in the developer's shell can change."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from common.launch.broker import LocalBroker
from common.infra.config import PREFIX, Settings, load_settings
from common.infra.db import dispose_engines, get_engine
from common.core.migrate import upgrade

IN_CI = bool(os.environ.get("CI"))
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

# Fast defaults for tests: short group timeouts (a tansu group join then takes ~3 s), fast
# retries, a short lease.
TEST_SETTINGS = dict(
    kafka_session_timeout_ms=6000,
    kafka_max_poll_interval_ms=10000,
    topic_partitions=3,
    retry_backoff_seconds=0.2,
    retry_backoff_max_seconds=2.0,
    retry_jitter=0.0,
    lease_seconds=10.0,
    scan_interval_seconds=2.0,
    # The suite's broker is on this machine and answers in milliseconds; tests of an unreachable
    # one (127.0.0.1:1) then wait a second for it, not three.
    kafka_connect_timeout_ms=1000,
    # The suite's own receivers listen on this machine: opened here, not by a weaker default.
    http_allow_private=("127.0.0.1/32", "::1/128"),
    # Tests of everything but security call the API without credentials; tests/*/test_auth*.py,
    # test_tenants*.py and the security e2e tests run with CHRONOQ_AUTH on.
    auth_enabled=False,
    # The suite's services serve their metrics on any free port, never on the defaults a
    # developer's `chronoq up` on the same machine wants.
    api_metrics_port=0,
    scanner_metrics_port=0,
    executor_metrics_port=0,
    results_metrics_port=0,
)


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not available: {exc}"
    if IN_CI:
        pytest.fail(message)  # CI must not go green by skipping the real services
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run, dropped at the end."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"chronoq_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(load_settings({}, database_url=url))
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """A tansu broker for the whole session, stopped by PID at the end."""
    try:
        local = LocalBroker().start()
    except Exception as exc:  # noqa: BLE001 - any failure to start means "not available"
        _unavailable("the tansu broker", exc)
    yield local
    local.stop()


@pytest.fixture
def settings(pg_url: str) -> Iterator[Settings]:
    """Settings on the test database, emptied before each test."""
    result = load_settings({}, database_url=pg_url, **TEST_SETTINGS)
    with get_engine(result).begin() as conn:
        conn.execute(sa.text("TRUNCATE job_attempts, jobs, job_events, workflows, schedules, api_keys, tenants, audit_log"))
    yield result


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on each kind of database chronoq runs on: the test PostgreSQL database, and a
    fresh SQLite file (the local run); statements with a set-based PostgreSQL form and a
    portable one must leave the same rows behind."""
    if request.param == "postgresql":
        yield request.getfixturevalue("settings")
        return
    from common.core.migrate import upgrade

    local = load_settings({}, database_url=f"sqlite:///{tmp_path / 'chronoq.db'}")
    upgrade(local)
    yield local


def with_own_topics(settings: Settings, broker: LocalBroker) -> Settings:
    """``settings`` on ``broker``, with topics and consumer groups no one else uses, the topics
    already created."""
    from dataclasses import replace

    from common.infra.kafka import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    result = replace(
        settings,
        kafka_bootstrap=broker.bootstrap,
        topic_jobs=f"jobs-{suffix}",
        topic_updates=f"updates-{suffix}",
        topic_dlq=f"dlq-{suffix}",
        group_prefix=f"test-{suffix}",
    )
    ensure_topics(result)
    return result


@pytest.fixture
def kafka_settings(settings: Settings, broker: LocalBroker) -> Settings:
    """Settings on the test database and broker, with topics and consumer groups unique to this
    test (so nothing one test does to the broker reaches another), the topics already created."""
    return with_own_topics(settings, broker)


@pytest.fixture(scope="module")
def module_kafka_settings(pg_url: str, broker: LocalBroker) -> Settings:
    """Settings with topics and consumer groups unique to one test module, for a service that
    serves all its tests (a consumer-group join costs seconds): its tests keep apart by their
    own job ids, and ask for ``settings`` too to have the database emptied before each."""
    return with_own_topics(load_settings({}, database_url=pg_url, **TEST_SETTINGS), broker)
