"""The local run heals a wedged group: an executor process whose group the broker wedged (its
leader left mid-rebalance, tests/wedge.py) reports itself stuck on its health endpoint; the local
run's watch sees it and restarts the broker, after which the executor joins and runs jobs.

The wedge holds only while the group's requests reach tansu's coordinator one at a time: two at
the same moment can make it reload the group and drop the departed leader, and the group heals
by itself (docs/tansu-group-wedge.md, "What un-wedges a group"). The executor's own requests are
kept apart by its join timeout (JOIN_TIMEOUT)."""

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

#: The executor's join timeout. A stuck member is replaced by a fresh one when it runs out, while
#: tansu still cycles the old member's JoinGroup or SyncGroup once a second (the client's polls
#: come every 0.5 s). A whole number of seconds would put the fresh member's requests within a
#: few milliseconds of those, and now and then at the same moment, which heals the group before
#: the watch sees it stuck; the half second keeps them ~0.5 s apart.
JOIN_TIMEOUT = 6.5


def health(port: int) -> dict:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}


def not_joined(port: int, broker_log: Path) -> dict:
    """The executor's consumer report; fails at once if it joined the wedged group (it healed)."""
    report = health(port).get("consumers", [{}])[0]
    assert report.get("state") != "stable", (
        f"the executor joined its group before the broker restarted, so the wedge did not hold: {report}; "
        f"the coordinator's decisions are in {broker_log} when the test runs with "
        "RUST_LOG=warn,tansu_broker::coordinator=debug"
    )
    return report


@pytest.mark.timeout(300)
def test_local_run_restarts_a_broker_that_wedged_a_group(pg_url: str, tmp_path: Path) -> None:
    broker = LocalBroker(log_path=tmp_path / "broker.log").start()
    executor: Service | None = None
    try:
        settings = system_settings(pg_url, broker.bootstrap, group_join_timeout_seconds=JOIN_TIMEOUT)
        ensure_topics(settings)
        # Returns once the coordinator itself has told a fresh member that the departed leader
        # leads, with nothing of the wedge's own requests still running in the broker.
        wedge_group(broker.bootstrap, settings.topic_jobs, settings.executor_group)

        port = free_port()
        env = service_env(settings, CHRONOQ_HEALTH_PORT=str(port))
        executor = Service("executor1", env, tmp_path / "executor1.log").start()
        wait_for(lambda: not_joined(port, broker.log_path).get("state") == "stuck", timeout=90,
                 interval=0.5, what="the executor to report itself stuck")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 503
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert f'chronoq_consumer_stuck{{group="{settings.executor_group}",topic="{settings.topic_jobs}"}} 1.0' in metrics

        child = SimpleNamespace(name="executor1", health_port=port, process=executor.process)
        watch = GroupWatch([child], JOIN_TIMEOUT)
        watch.EVERY = 1.0

        def watch_verdict() -> str | None:
            not_joined(port, broker.log_path)
            return watch.stuck()

        why = wait_for(watch_verdict, timeout=90, interval=0.5, what="the watch to call the group stuck")
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
