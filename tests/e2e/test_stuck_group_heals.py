"""The local run heals a wedged group: an executor process whose group the broker wedged (its
leader left mid-rebalance, tests/wedge.py) reports itself stuck on its health endpoint; the local
run's watch sees it and restarts the broker, after which the executor joins and runs jobs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from common.core import store
from common.core.messages import encode_dispatch
from common.infra.clock import utcnow
from common.infra.db import session_scope
from common.infra.kafka import Producer, ensure_topics
from common.launch.broker import LocalBroker, free_port
from common.launch.localrun import GroupWatch, restart_broker
from tests.e2e.conftest import system_settings
from tests.helpers import add_job, get_job, wait_for
from tests.processes import Service, service_env
from tests.wedge import wedge_group

pytestmark = pytest.mark.e2e


def health(port: int) -> dict:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}


@pytest.mark.timeout(300)
def test_local_run_restarts_a_broker_that_wedged_a_group(pg_url: str, tmp_path: Path) -> None:
    broker = LocalBroker(log_path=tmp_path / "broker.log").start()
    executor: Service | None = None
    try:
        settings = system_settings(pg_url, broker.bootstrap, group_join_timeout_seconds=6.0)
        ensure_topics(settings)
        wedge_group(broker.bootstrap, settings.topic_jobs, settings.executor_group)

        port = free_port()
        env = service_env(settings, CHRONOQ_HEALTH_PORT=str(port))
        executor = Service("executor1", env, tmp_path / "executor1.log").start()
        wait_for(lambda: health(port).get("consumers", [{}])[0].get("state") == "stuck", timeout=90,
                 interval=0.5, what="the executor to report itself stuck")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 503
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert f'chronoq_consumer_stuck{{group="{settings.executor_group}",topic="{settings.topic_jobs}"}} 1.0' in metrics

        watch = GroupWatch([SimpleNamespace(name="executor1", health_port=port, process=executor.process)], 6.0)
        watch.EVERY = 1.0
        why = wait_for(watch.stuck, timeout=90, interval=0.5, what="the watch to call the group stuck")
        assert settings.executor_group in why
        broker = restart_broker(broker, settings, why)

        wait_for(lambda: health(port).get("status") == "ok", timeout=90, interval=0.5,
                 what="the executor to join the restarted broker's group")
        job_id = add_job(settings, due_in=0.5, name="after-heal")
        with session_scope(settings) as session:
            (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=settings.lease_seconds).messages
        producer = Producer(settings)
        try:
            producer.send_and_wait(settings.topic_jobs, message.key, encode_dispatch(message))
        finally:
            producer.close()
        wait_for(lambda: get_job(settings, job_id).status == "SUCCESS", timeout=60, what="a job after the heal")
        report = health(port)["consumers"][0]
        print(f"\nheal: stuck, {report['fresh_rejoins']} fresh rejoins, broker restarted, executor rejoined "
              f"({report['partitions']} partitions) and ran a job")
        assert report["state"] == "stable" and report["partitions"] > 0
    finally:
        if executor is not None:
            code = executor.stop()
            log = (tmp_path / "executor1.log").read_text(errors="replace")
            assert code == 0, log[-3000:]
            assert "Rejoining as a fresh member" in log
        broker.stop()
