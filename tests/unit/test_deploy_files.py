"""The production-shaped compose file: checked structurally, and by the compose CLI if present."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rapport.localstack import REDIS_TUNING

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_kafka_in_kraft_mode_and_redis_with_aof() -> None:
    services = _compose()["services"]
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert "appendonly" in " ".join(services["redis"]["command"])
    assert "everysec" in services["redis"]["command"]


def test_compose_redis_has_the_memory_tuning_the_embedded_stack_uses() -> None:
    command = " ".join(_compose()["services"]["redis"]["command"])
    assert " ".join(REDIS_TUNING) in command


def test_compose_runs_the_four_services_from_one_image_with_readiness_probes() -> None:
    services = _compose()["services"]
    apps = {
        name: services[name] for name in ("invitation", "connection", "engagement", "projection")
    }
    assert {svc["image"] for svc in apps.values()} == {"rapport:latest"}
    for name, svc in apps.items():
        assert svc["command"] == [name]
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert set(services["prometheus"]["profiles"]) == {"observability"}


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(
    _compose_cli() is None,
    reason="no compose CLI here (apt-get install docker-compose); structure checked above",
)
def test_compose_config_validates() -> None:
    cmd = [*(_compose_cli() or []), "config", "--quiet"]
    result = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAPPORT_API_TOKENS": "t"},
    )
    assert result.returncode == 0, result.stderr


# --- Kubernetes (deploy/k8s) -----------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
SERVICE_PARTITIONS = {"invitation": 12, "connection": 12, "engagement": 12, "projection": 12}


def _rendered() -> list[dict]:
    """What `kubectl apply -k deploy/k8s` would send, rendered offline by kubectl's kustomize."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed; it renders deploy/k8s"
)


@needs_kubectl
def test_manifests_pass_the_kubernetes_schema_strictly() -> None:
    import kubernetes_validate

    docs = _rendered()
    docs.append(yaml.safe_load((K8S / "api-token-secret.example.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == kinds.count("HorizontalPodAutoscaler") == 4


def test_the_schema_check_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    deployment = yaml.safe_load((K8S / "service" / "deployment.yaml").read_text())
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/readyz"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@needs_kubectl
def test_each_service_has_probes_resources_and_bounded_autoscaling() -> None:
    docs = _rendered()
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind["ConfigMap"]["rapport-config"]["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] and config["REDIS_URL"].startswith("redis://")
    for name, partitions in SERVICE_PARTITIONS.items():
        deployment = by_kind["Deployment"][f"rapport-{name}"]
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert container["args"] == [name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]["cpu"]
        assert {"configMapRef": {"name": "rapport-config"}} in container["envFrom"]
        assert {"secretRef": {"name": "rapport-api-tokens"}} in container["envFrom"]
        # Service and PDB select exactly this service's pods.
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        service = by_kind["Service"][f"rapport-{name}"]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert (
            by_kind["PodDisruptionBudget"][f"rapport-{name}"]["spec"]["selector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )
        hpa = by_kind["HorizontalPodAutoscaler"][f"rapport-{name}"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"rapport-{name}"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions


# --- Prometheus and Grafana -------------------------------------------------------------------


def test_grafana_dashboard_only_charts_metrics_the_services_export() -> None:
    import re

    from prometheus_client import REGISTRY

    import shared.observability  # noqa: F401  (registers the metrics)

    exported = {
        sample_name
        for metric in REGISTRY.collect()
        for sample_name in [metric.name, f"{metric.name}_total", f"{metric.name}_bucket"]
    }
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/rapport.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\brapport_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    for needed in (
        "http_requests",
        "events_published",
        "events_consumed",
        "events_failed",
        "outbox_backlog",
        "consumer_lag",
        "dlq_records",
        "ready",  # the alerts' signals (deploy/prometheus/alerts.yml) have panels too
        "rebuild_behind",
    ):
        assert any(needed in m for m in used), needed


def test_compose_wires_prometheus_and_grafana_to_the_dashboard_under_a_profile() -> None:
    services = _compose()["services"]
    assert services["grafana"]["profiles"] == ["observability"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards" in mounts and "./deploy/grafana/provisioning" in mounts
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(
        ["invitation:8001", "connection:8002", "engagement:8003", "projection:8004"]
    )
    provider = yaml.safe_load(
        next((ROOT / "deploy/grafana/provisioning/dashboards").glob("*.y*ml")).read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
