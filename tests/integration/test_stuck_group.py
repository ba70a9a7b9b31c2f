"""A member that cannot join its group is noticed, exposed and rejoined fresh, over the real
broker: the group is wedged the way the suite once wedged it (its leader leaves in the middle
of a rebalance; tests/wedge.py), and another deployment's group on the same topic is unharmed."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest

from common.infra.config import Settings
from executor_service.service import Executor
from tests.helpers import wait_for
from tests.wedge import wedge_group


def test_executor_in_a_wedged_group_reports_stuck_and_rejoins_fresh(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    # Not a whole number of seconds: each fresh member's requests then stay ~0.5 s away from its
    # predecessor's, which tansu keeps cycling once a second; two at the same moment can heal the
    # group (docs/tansu-group-wedge.md, "What un-wedges a group").
    settings = replace(kafka_settings, group_join_timeout_seconds=8.5)
    wedge_group(settings.kafka_bootstrap, settings.topic_jobs, settings.executor_group)

    stop = threading.Event()
    wedged = Executor(settings, stop)
    # Another deployment on the same topic, with its own group prefix: not affected.
    other = Executor(replace(settings, group_prefix=settings.group_prefix + "-other"), stop)
    threads = [threading.Thread(target=e.run, daemon=True) for e in (wedged, other)]
    caplog.set_level(logging.ERROR, logger="common.infra.consumer")
    for thread in threads:
        thread.start()
    try:
        wait_for(other.ready.is_set, timeout=60, what="the other deployment's executor to get partitions")
        wait_for(lambda: wedged.consumer.health.stuck, timeout=60, what="the wedged executor to report itself stuck")
        healthy, details = wedged.health()
        (consumer,) = details["consumers"]
        assert not healthy and consumer["state"] == "stuck" and consumer["group"] == settings.executor_group
        assert consumer["unstable_seconds"] >= settings.group_join_timeout_seconds
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(settings.executor_group in m and "Rejoining as a fresh member" in m for m in errors), errors
        # It keeps trying, one fresh member per timeout, and never claims to be healthy.
        wait_for(lambda: wedged.consumer.health.rejoins >= 2, timeout=60, what="a second fresh rejoin")
        assert not wedged.ready.is_set() and not wedged.health()[0]
        assert other.health()[0] and other.consumer.health.partitions == settings.topic_partitions
        print(f"\nwedged group: stuck reported after {settings.group_join_timeout_seconds:g}s bound, "
              f"{wedged.consumer.health.rejoins} fresh rejoins; other group: {other.consumer.health.partitions} partitions")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.is_alive() for t in threads), "an executor did not stop"
