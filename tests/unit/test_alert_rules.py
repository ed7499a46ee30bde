"""The Prometheus alerting rules (deploy/prometheus/alerts.yml): valid, unit-tested with
`promtool test rules` (each fires on its signal and stays quiet on a look-alike), loaded by
the scrape config, and written only against metrics the services export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"
# One rule per signal operators asked for: lag, DLQ, outbox, 5xx, readiness, rebuild.
ALERTS = {
    "RapportConsumerLagGrowing",
    "RapportDeadLetters",
    "RapportOutboxBacklogGrowing",
    "RapportHighErrorRate",
    "RapportNotReady",
    "RapportRebuildStuck",
}

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing: `make test` installs Debian's prometheus package",
)


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran


@promtool
def test_every_rule_passes_its_promtool_unit_tests() -> None:
    ran = _promtool("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in ran.stdout + ran.stderr


@promtool
def test_the_scrape_config_and_its_rules_are_valid() -> None:
    ran = _promtool("check", "config", "prometheus.yml")
    assert "6 rules found" in ran.stdout


def test_each_signal_has_a_rule_with_a_unit_test() -> None:
    names = {rule["alert"] for rule in _rules()}
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]  # a test where it fires, not only one where it is quiet
    }
    assert names == ALERTS
    assert tested == ALERTS
    for rule in _rules():
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]


def test_rules_use_only_metrics_the_services_export() -> None:
    from prometheus_client import REGISTRY

    import shared.observability  # noqa: F401  (registers the metrics)

    exported = {
        name
        for metric in REGISTRY.collect()
        for name in [metric.name, f"{metric.name}_total", f"{metric.name}_bucket"]
    } | {"up"}
    used = {
        name
        for rule in _rules()
        for name in re.findall(r"\b((?:rapport_|up\b)[a-z_]*)", rule["expr"])
    }
    assert used and used <= exported, used - exported
