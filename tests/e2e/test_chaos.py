"""The chaos test (see tests/chaos.py). Short in CI; for the long form run

    CHAOS_SECONDS=600 .venv/bin/python -m pytest -s tests/e2e/test_chaos.py

CHAOS_SEED makes the faults repeatable; CHAOS_FAULTS=kill_executor,broker_loss limits their kinds.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import FAULTS, Chaos

SECONDS = float(os.environ.get("CHAOS_SECONDS", "30"))
SEED = int(os.environ.get("CHAOS_SEED", "0")) or None
KINDS = tuple(k for k in os.environ.get("CHAOS_FAULTS", ",".join(FAULTS)).split(",") if k)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(SECONDS + 400)]


def test_nothing_lost_nothing_started_twice_under_faults(make_system, own_broker, receiver) -> None:
    system = make_system(executors=3, scanners=2, broker_=own_broker, executor_workers=64)
    report = Chaos(system, own_broker, receiver, seconds=SECONDS, seed=SEED, faults=KINDS).run()
    print("\n" + "\n".join(report.lines()))
    if report.lost or report.not_terminal or report.double_starts or report.missing_calls or report.history_errors:
        print(system.logs(tail=3000))
    assert sum(report.faults.values()) >= SECONDS / 10 or not KINDS, "too few faults were injected"
    assert report.created >= SECONDS * 10
    assert report.lost == []
    assert report.not_terminal == []
    assert report.double_starts == {}
    assert report.missing_calls == []
    assert report.history_errors == []
