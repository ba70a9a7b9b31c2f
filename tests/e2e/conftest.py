"""Fixtures for tests that run the services as processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from common.core import apikeys
from common.core.roles import Role
from common.core.secrets import Keyring
from common.infra.clock import utcnow
from common.infra.db import session_scope
from common.launch.broker import LocalBroker, free_port
from common.infra.config import Settings, load_settings
from common.infra.kafka import ensure_topics
from tests.conftest import TEST_SETTINGS
from tests.helpers import wait_for
from tests.processes import System
from tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker this test may kill and restart (on the same port)."""
    broker = LocalBroker().start()
    yield broker
    broker.stop()


def system_settings(pg_url: str, bootstrap: str, **overrides: Any) -> Settings:
    """Settings for a system under test: the run's database, its own topics and consumer groups
    (nothing another test did to the broker can reach it), a free API port."""
    suffix = uuid.uuid4().hex[:8]
    values = {**TEST_SETTINGS, "lease_seconds": 6.0, "sweep_interval_seconds": 1.0, **overrides}
    return load_settings(
        {}, database_url=pg_url, kafka_bootstrap=bootstrap, api_port=free_port(), api_workers=2,
        topic_jobs=f"jobs-{suffix}", topic_updates=f"updates-{suffix}", topic_dlq=f"dlq-{suffix}",
        group_prefix=f"test-{suffix}", **values,
    )


def warm_up(system: System, timeout: float = 60.0) -> None:
    """One job through the whole pipeline: every consumer group has joined."""
    response = requests.post(
        f"{system.base_url}/api/jobs", json={"name": "warm-up", "type": "noop", "delay_seconds": 0}, timeout=10,
        headers=system.headers,
    )
    assert response.status_code == 201, response.text
    url = system.base_url + response.headers["Location"]
    wait_for(lambda: requests.get(url, timeout=5, headers=system.headers).json()["status"] == "SUCCESS",
             timeout=timeout, what="warm-up job")


@pytest.fixture
def make_system(pg_url: str, broker: LocalBroker, tmp_path: Path) -> Iterator[Callable[..., System]]:
    """Start a system: ``make_system(executors=2, broker=own_broker, lease_seconds=5)``. Every
    process is stopped at the end of the test; logs are printed when the test failed."""
    started: list[System] = []

    def make(executors: int = 1, scanners: int = 1, broker_: LocalBroker | None = None, **overrides: Any) -> System:
        settings = system_settings(pg_url, (broker_ or broker).bootstrap, **overrides)
        ensure_topics(settings)
        log_dir = tmp_path / f"logs{len(started)}"
        log_dir.mkdir()
        system = System(settings, log_dir, executors=executors, scanners=scanners)
        if settings.auth_enabled:
            system.headers = key_headers(settings, "ops", "admin")
        started.append(system)
        system.start()
        warm_up(system)
        return system

    yield make
    for system in started:
        system.stop()


def module_system(pg_url: str, broker: LocalBroker, logs: Path, env: dict[str, str] | None = None,
                  **overrides: Any) -> Iterator[System]:
    """A system shared by a module's tests (a module-scoped fixture yields from this): started
    and warmed up, its logs printed if that fails, stopped cleanly at the end. With
    authentication on, ``system.headers`` carry an admin key of tenant ``ops``. ``env``: more
    variables for every process (``OTEL_*``)."""
    settings = system_settings(pg_url, broker.bootstrap, **overrides)
    ensure_topics(settings)
    running = System(settings, logs, env=env)
    if settings.auth_enabled:
        running.headers = key_headers(settings, "ops", "admin")
    running.start()
    try:
        warm_up(running)
    except BaseException:
        print(running.logs())
        running.stop()
        raise
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), f"unclean stop {codes}:\n{running.logs()}"


def key_headers(settings: Settings, tenant: str, role: str) -> dict[str, str]:
    """The Authorization header of a new API key."""
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant=tenant, role=Role.parse(role), name=f"e2e-{role}",
                                  created_by="tests", keyring=Keyring.from_settings(settings), now=utcnow())
    return {"Authorization": f"Bearer {made.key}"}


def create(system: System, headers: dict[str, str] | None = None, **body: Any) -> dict:
    response = requests.post(f"{system.base_url}/api/jobs", json=body, timeout=10,
                             headers=system.headers if headers is None else headers)
    assert response.status_code == 201, response.text
    return response.json()


def job(system: System, job_id: str) -> dict:
    return requests.get(f"{system.base_url}/api/jobs/{job_id}", timeout=10, headers=system.headers).json()


def attempts(system: System, job_id: str) -> list[dict]:
    return requests.get(f"{system.base_url}/api/jobs/{job_id}/attempts", timeout=10,
                        headers=system.headers).json()["items"]
