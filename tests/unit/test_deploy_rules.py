"""deploy/: the alert rules parse and hold the four alerts, each alert fires on the series it is
about and not on healthy ones (promtool's rule unit tests, when promtool is installed), and every
metric the rules and the Grafana dashboard name is one a chronoq service really exports."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from api.metrics import Metrics

#: The modules whose import registers each service's metrics in the default registry.
SERVICE_METRICS = ("executor_service.metrics", "scheduler_service.metrics", "result_service.metrics",
                   "common.infra.health")
for module in SERVICE_METRICS:
    importlib.import_module(module)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/chronoq.rules.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/chronoq.json"
ALERTS = {"ChronoqFireLatenessHigh", "ChronoqConsumerLagGrowing", "ChronoqDeadLetters", "ChronoqScannerSilent"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported(registry: CollectorRegistry) -> set[str]:
    """The series names a registry's metrics produce, whether or not they have samples yet."""
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def named(text: str) -> set[str]:
    return set(re.findall(r"\bchronoq_[a-z0-9_]+", text))


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_rules_have_the_four_alerts_with_a_severity_and_a_summary() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_metric_named_in_rules_and_dashboard_is_exported() -> None:
    known = exported(REGISTRY) | exported(Metrics().registry)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 20
    used_by_rules = named(RULES.read_text())
    used_by_dashboard = named("\n".join(exprs))
    assert {"chronoq_executor_fire_lateness_seconds_bucket", "chronoq_consumer_lag"} <= used_by_rules
    assert not used_by_rules - known, f"rules name metrics nobody exports: {sorted(used_by_rules - known)}"
    assert not used_by_dashboard - known, f"dashboard names unknown metrics: {sorted(used_by_dashboard - known)}"


def test_dashboard_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):  # .ci/run installs it: a missing one there is a broken run
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_promtool_accepts_the_rules_and_the_configuration(tmp_path: Path) -> None:
    promtool = _promtool()
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["rule_files"] = [str(RULES)]  # the compose path, /etc/prometheus/rules, is the container's
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


#: Series and the alerts they must (and must not) raise, in promtool's rule-test format.
RULE_TESTS = [
    {   # 100 fires a minute, all between 100 and 500 ms late: p99 ~0.5 s
        "interval": "1m",
        "input_series": [
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="http",le="0.1"}', "values": "0+0x40"},
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="http",le="0.5"}', "values": "0+100x40"},
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="http",le="+Inf"}', "values": "0+100x40"},
            # on time: 1-2 ms
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="noop",le="0.001"}', "values": "0+0x40"},
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="noop",le="0.002"}', "values": "0+100x40"},
            {"series": 'chronoq_executor_fire_lateness_seconds_bucket{type="noop",le="+Inf"}', "values": "0+100x40"},
            # a backlog growing by 50 records a minute, and a steady one
            {"series": 'chronoq_consumer_lag{group="chronoq-results",topic="updates",instance="a"}', "values": "0+50x40"},
            {"series": 'chronoq_consumer_lag{group="chronoq-executors",topic="jobs",instance="b"}', "values": "500x40"},
            # one dead letter at minute 3
            {"series": 'chronoq_consumer_dead_lettered_total{group="chronoq-results",topic="updates"}',
             "values": "0 0 0 1x37"},
            # a scanner that stopped at minute 5 (its last pass at 300 s)
            {"series": "chronoq_scanner_last_pass_timestamp_seconds", "values": "0+60x5 300x35"},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "ChronoqScannerSilent", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "ChronoqScannerSilent",
             "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
            {"eval_time": "5m", "alertname": "ChronoqFireLatenessHigh", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "ChronoqFireLatenessHigh",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "type": "http"}}]},
            {"eval_time": "10m", "alertname": "ChronoqConsumerLagGrowing", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "ChronoqConsumerLagGrowing",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "group": "chronoq-results", "topic": "updates"}}]},
            {"eval_time": "2m", "alertname": "ChronoqDeadLetters", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "ChronoqDeadLetters", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
            {"eval_time": "25m", "alertname": "ChronoqDeadLetters", "exp_alerts": []},
        ],
    },
]


def test_each_alert_fires_on_its_symptom_and_only_then(tmp_path: Path) -> None:
    promtool = _promtool()
    # The rules as they are, but for the annotations (promtool would compare their texts too).
    stripped = yaml.safe_load(RULES.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(stripped))
    spec = tmp_path / "chronoq.rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": RULE_TESTS}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
