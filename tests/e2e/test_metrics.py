"""End to end: every service, run as a process, exports Prometheus metrics on its own port
(the API under gunicorn with two workers, in multiprocess mode), and with
CHRONOQ_LOG_FORMAT=json the executor's lines about a job carry its id, attempt and token as
fields. One system for the module."""

from __future__ import annotations

import json
import time
from typing import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.launch.broker import free_port
from tests.e2e.conftest import create, module_system
from tests.e2e.conftest import job as get
from tests.helpers import wait_for
from tests.processes import System

pytestmark = pytest.mark.e2e

#: Each service's metrics port, picked when the system starts: picked at import, minutes before
#: the module runs, a port can be taken meanwhile, the service falls back to another, and the
#: test scrapes whatever holds it (a clean-clone run once scraped a page without the lag).
PORTS: dict[str, int] = {}
SERVICES = ("scanner", "executor", "results")


@pytest.fixture(scope="module")
def system(pg_url, broker, tmp_path_factory) -> Iterator[System]:
    PORTS.update(api=free_port(), scanner=free_port(), executor=free_port(), results=free_port())
    yield from module_system(
        pg_url, broker, tmp_path_factory.mktemp("e2e-metrics-logs"), sweep_interval_seconds=1.0,
        scanner_metrics_port=PORTS["scanner"], executor_metrics_port=PORTS["executor"],
        results_metrics_port=PORTS["results"], api_metrics_port=PORTS["api"], log_format="json",
    )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition at ``url``: (name, sorted labels) -> value."""
    response = requests.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def service(name: str) -> str:
    return f"http://127.0.0.1:{PORTS[name]}/metrics"


def test_each_service_exports_what_it_did(system: System) -> None:
    before = {name: scrape(service(name)) for name in SERVICES}
    noops = [create(system, name=f"m-noop-{i}", type="noop", delay_seconds=0) for i in range(3)]
    fails = [create(system, name=f"m-fail-{i}", type="fail", delay_seconds=0, max_retries=0,
                    payload={"message": "nope"}) for i in range(2)]
    wait_for(lambda: all(get(system, j["id"])["status"] in ("SUCCESS", "FAILED") for j in noops + fails),
             timeout=30, interval=0.2, what="the five jobs finished")

    # The executor: each started attempt in the lateness histogram of its type, and its outcome.
    def executor_counted() -> dict | None:
        now = scrape(service("executor"))
        lateness = {
            kind: value(now, "chronoq_executor_fire_lateness_seconds_count", type=kind)
            - value(before["executor"], "chronoq_executor_fire_lateness_seconds_count", type=kind)
            for kind in ("noop", "fail")
        }
        return now if lateness == {"noop": 3, "fail": 2} else None

    after = wait_for(executor_counted, timeout=10, interval=0.2, what="lateness of 3 noop and 2 fail jobs")
    old = before["executor"]
    assert value(after, "chronoq_executor_attempts_total", outcome="succeeded") - \
        value(old, "chronoq_executor_attempts_total", outcome="succeeded") == 3
    assert value(after, "chronoq_executor_attempts_total", outcome="failed") - \
        value(old, "chronoq_executor_attempts_total", outcome="failed") == 2
    # Fired on the dot by an idle executor: well under a second late on average, never early.
    noop_sum = value(after, "chronoq_executor_fire_lateness_seconds_sum", type="noop") - \
        value(old, "chronoq_executor_fire_lateness_seconds_sum", type="noop")
    assert 0 <= noop_sum < 3.0
    assert value(after, "chronoq_executor_fire_lateness_seconds_bucket", type="noop", le="+Inf") >= 3
    assert value(after, "chronoq_executor_claim_seconds_count") >= 1
    assert value(after, "chronoq_executor_write_seconds_count") >= 1
    assert ("chronoq_executor_waiting_attempts", ()) in after

    # The scanner: passes go on (a sweep a second here) and say when the last one ended.
    first = scrape(service("scanner"))
    wait_for(lambda: value(scrape(service("scanner")), "chronoq_scanner_passes_total", outcome="ok")
             > value(first, "chronoq_scanner_passes_total", outcome="ok"), timeout=10, what="another scanner pass")
    assert abs(time.time() - value(first, "chronoq_scanner_last_pass_timestamp_seconds")) < 30
    assert value(first, "chronoq_scanner_pass_duration_seconds_count") >= 1
    assert ("chronoq_scanner_overdue_jobs", ()) in first

    # The result writer: the ten updates of the five jobs (RUNNING and the end of each) recorded;
    # most only add history, the executor having written the job's row through already.
    def results_applied() -> bool:
        now = scrape(service("results"))
        return sum(value(now, "chronoq_results_updates_total", result=r)
                   - value(before["results"], "chronoq_results_updates_total", result=r)
                   for r in ("applied", "ignored")) >= 10

    wait_for(results_applied, timeout=10, interval=0.2, what="the result writer's applied updates")
    # The lag is exported once a measure knows it (at most one a second, after a poll, from what
    # the fetches said): wait for the series rather than read the first scrape.
    def lag_known() -> list[float]:
        scraped = scrape(service("results"))
        return [v for (name, _labels), v in scraped.items() if name == "chronoq_consumer_lag"]

    lag = wait_for(lag_known, timeout=10, interval=0.2, what="the result writer's consumer lag")
    assert all(v >= 0 for v in lag)


def test_the_api_answers_for_both_workers_on_every_scrape(system: System) -> None:
    for _ in range(12):
        assert requests.get(f"{system.base_url}/api/jobs/stats", timeout=5).status_code == 200
    totals = set()
    # A new connection each time: gunicorn hands it to either worker; the master's own port
    # (no credential, loopback) answers for all of them as well.
    for url in [f"{system.base_url}/metrics"] * 8 + [service("api")] * 2:
        samples = scrape(url)
        totals.add((
            value(samples, "chronoq_api_requests_total", method="GET", endpoint="/api/jobs/stats", status="200"),
            value(samples, "chronoq_api_request_duration_seconds_count", method="GET", endpoint="/api/jobs/stats"),
        ))
    assert totals == {(12.0, 12.0)}


def test_json_log_lines_about_a_job_carry_its_fields(system: System) -> None:
    failed = create(system, name="m-logged", type="fail", delay_seconds=0, max_retries=0, payload={"message": "x"})
    wait_for(lambda: get(system, failed["id"])["status"] == "FAILED", timeout=30, interval=0.2, what="FAILED")

    def line() -> dict | None:
        for text in system.services["executor1"].log().splitlines():
            if failed["id"] in text and text.startswith("{"):
                record = json.loads(text)
                if record.get("job_id") == failed["id"]:
                    return record
        return None

    record = wait_for(line, timeout=10, interval=0.2, what="the executor's JSON line about the job")
    assert record["attempt"] == 1 and record["token"] and record["level"] == "WARNING"
    assert record["service"] == "executor" and record["time"].endswith("Z")
    # Every line of every service is one JSON object (gunicorn's included).
    for name, svc in system.services.items():
        for text in svc.log().splitlines():
            if text.strip():
                json.loads(text)
