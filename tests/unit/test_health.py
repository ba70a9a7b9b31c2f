"""The background services' health endpoint: off by default, JSON health and Prometheus text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from common.infra.config import load_settings
from common.infra.health import GroupHealth, HealthServer, consumers_check
from common.launch.broker import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_no_port_no_endpoint() -> None:
    server = HealthServer(load_settings({}), lambda: (True, {}), "executor").start()
    assert server._server is None
    server.stop()


@pytest.fixture
def member() -> GroupHealth:
    return GroupHealth("unit-health-group", "unit-health-topic")


def test_healthz_and_metrics_follow_the_consumers_state(member: GroupHealth) -> None:
    port = free_port()
    server = HealthServer(load_settings({}, health_port=port), consumers_check(member), "executor").start()
    base = f"http://127.0.0.1:{port}"
    try:
        member.stable(partitions=3)
        status, body = get(f"{base}/healthz")
        report = json.loads(body)
        assert status == 200 and report["status"] == "ok" and report["service"] == "executor"
        assert report["consumers"][0]["state"] == "stable" and report["consumers"][0]["partitions"] == 3

        member.unstable(now=0.0)
        member.gave_up_join()
        status, body = get(f"{base}/healthz")
        assert status == 503 and json.loads(body)["consumers"][0]["state"] == "stuck"

        status, body = get(f"{base}/metrics")
        text = body.decode()
        assert status == 200
        assert 'chronoq_consumer_stuck{group="unit-health-group",topic="unit-health-topic"} 1.0' in text
        assert 'chronoq_consumer_fresh_rejoins_total{group="unit-health-group",topic="unit-health-topic"} 1.0' in text
        assert get(f"{base}/other")[0] == 404
    finally:
        server.stop()
