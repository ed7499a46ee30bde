"""The production-shaped deployment files: the compose files and the Kubernetes manifests
(single-node and scaled), checked structurally, by the compose CLI, against the Kubernetes
schema and against the schemas of the operators' resources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rapport.localstack import REDIS_TUNING, SNAPSHOTS

ROOT = Path(__file__).resolve().parents[2]


def _compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_compose_runs_kafka_in_kraft_mode_and_redis_with_aof() -> None:
    services = _compose()["services"]
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert "appendonly" in " ".join(services["redis"]["command"])
    assert "everysec" in services["redis"]["command"]


def test_compose_redis_has_the_memory_tuning_the_embedded_stack_uses() -> None:
    for name in ("redis", "redis-read-models"):
        command = " ".join(_compose()["services"][name]["command"])
        assert " ".join(REDIS_TUNING) in command


def test_compose_keeps_the_read_models_on_a_redis_with_snapshots_not_aof() -> None:
    services = _compose()["services"]
    command = services["redis-read-models"]["command"]
    assert command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--save") + 1] == SNAPSHOTS
    url = services["projection"]["environment"]["READ_MODEL_REDIS_URL"]
    assert url.startswith("redis://redis-read-models:")
    assert "redis-read-models" in services["projection"]["depends_on"]


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
@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.scaled.yml"])
def test_compose_config_validates(name: str) -> None:
    cmd = [*(_compose_cli() or []), "-f", name, "config", "--quiet"]
    result = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAPPORT_API_TOKENS": "t"},
    )
    assert result.returncode == 0, result.stderr


def test_the_scaled_compose_runs_three_brokers_a_six_node_redis_cluster_and_two_replicas() -> None:
    services = _compose("docker-compose.scaled.yml")["services"]
    brokers = [services[f"kafka-{n}"]["environment"] for n in (1, 2, 3)]
    voters = {b["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert sorted(b["KAFKA_NODE_ID"] for b in brokers) == [1, 2, 3]
    assert len({b["CLUSTER_ID"] for b in brokers}) == 1
    assert all(b["KAFKA_MIN_INSYNC_REPLICAS"] == 2 for b in brokers)
    assert services["topics"]["environment"]["RAPPORT_TOPIC_REPLICATION_FACTOR"] == 3
    nodes = [services[f"redis-{n}"] for n in range(1, 7)]
    for node in nodes:
        command = " ".join(node["command"])
        assert "--cluster-enabled yes" in command and "--appendonly yes" in command
        assert " ".join(REDIS_TUNING) in command
    create = " ".join(services["redis-cluster"]["command"])
    assert "--cluster-replicas 1" in create
    assert all(f"redis-{n}:6379" in create for n in range(1, 7))
    for name in ("invitation", "connection", "engagement", "projection"):
        svc = services[name]
        assert svc["deploy"]["replicas"] == 2
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"].count("kafka-") == 3
        # Every service on the cluster, the write services in the same slot groups.
        assert svc["environment"]["RAPPORT_REDIS_CLUSTER"] == "true"
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis-")
        assert svc["environment"]["RAPPORT_SLOT_GROUPS"] == "12"
    assert not [name for name in services if name.startswith("redis-writes")]


# --- Kubernetes (deploy/k8s) -----------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
SERVICE_PARTITIONS = {"invitation": 12, "connection": 12, "engagement": 12, "projection": 12}


def _rendered(root: Path = K8S) -> list[dict]:
    """What `kubectl apply -k <root>` would send, rendered offline by kubectl's kustomize."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(root)], capture_output=True, text=True, timeout=60, check=True
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


# --- Kubernetes, scaled (deploy/k8s-scaled): Strimzi and redis-operator resources ----------

K8S_SCALED = ROOT / "deploy" / "k8s-scaled"
K8S_MODELS = ROOT / ".cache" / "k8s-models"
STRIMZI = "kafka.strimzi.io/v1"
OT_REDIS = "redis.redis.opstreelabs.in/v1beta2"


@needs_kubectl
def test_the_scaled_manifests_run_kafka_and_redis_through_their_operators() -> None:
    import kubernetes_validate

    from shared.kafka import KEEP_FOREVER
    from shared.topics import TopicNames

    docs = _rendered(K8S_SCALED)
    builtin = [d for d in docs if d["apiVersion"] not in (STRIMZI, OT_REDIS)]
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert len(by_kind["Deployment"]) == 4
    # Every topic Rapport needs, with its partition count, on 3 brokers, kept forever.
    topics = by_kind["KafkaTopic"]
    assert {n: t["spec"]["partitions"] for n, t in topics.items()} == TopicNames("").partitions()
    for topic in topics.values():
        assert topic["spec"]["replicas"] == 3
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "rapport"
        assert {k: str(v) for k, v in topic["spec"]["config"].items()} == KEEP_FOREVER
    [pool] = by_kind["KafkaNodePool"].values()
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    kafka = by_kind["Kafka"]["rapport"]["spec"]["kafka"]
    assert kafka["config"]["min.insync.replicas"] == 2
    assert kafka["config"]["auto.create.topics.enable"] is False
    # 3 leaders with a follower each, for every service's keys.
    cluster = by_kind["RedisCluster"]["rapport"]["spec"]
    assert cluster["clusterSize"] == cluster["redisLeader"]["replicas"] == 3
    assert cluster["redisFollower"]["replicas"] == 3 and cluster["persistenceEnabled"]
    assert "RedisReplication" not in by_kind
    tuning = by_kind["ConfigMap"]["rapport-redis-config"]["data"]["redis-additional.conf"]
    assert " ".join(REDIS_TUNING).removeprefix("--") in tuning
    # The services find them through the operators' Services, every one on the cluster.
    config = by_kind["ConfigMap"]["rapport-config"]["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == "rapport-kafka-bootstrap:9092"
    assert config["REDIS_URL"] == "redis://rapport-leader:6379/0"
    assert config["RAPPORT_REDIS_CLUSTER"] == "true" and config["RAPPORT_SLOT_GROUPS"] == "12"


def _strimzi_errors(docs: list[dict]) -> dict[str, str | None]:
    """Each Strimzi resource's schema error (None when it passes), by kind/name."""
    out = subprocess.run(
        ["node", str(ROOT / "tests/unit/strimzi_validate.mjs"), str(K8S_MODELS)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {f"{r['kind']}/{r['name']}": r["error"] for r in json.loads(out.stdout)}


needs_strimzi_models = pytest.mark.skipif(
    shutil.which("kubectl") is None
    or shutil.which("node") is None
    or not (K8S_MODELS / "node_modules/@kubernetes-models/strimzi-kafka-operator").is_dir(),
    reason="needs kubectl, node and Strimzi's schemas (`make k8s-models` installs them)",
)


@needs_strimzi_models
def test_the_strimzi_resources_pass_strimzis_schemas_and_a_broken_one_does_not() -> None:
    strimzi = [d for d in _rendered(K8S_SCALED) if d["apiVersion"] == STRIMZI]
    assert {d["kind"] for d in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic"}
    errors = _strimzi_errors(strimzi)
    assert len(errors) == len(strimzi)
    assert not {k: e for k, e in errors.items() if e}, errors
    pool = next(d for d in strimzi if d["kind"] == "KafkaNodePool")
    pool["spec"]["storage"]["volumes"][0]["type"] = "persistent-volume"
    assert _strimzi_errors([pool])[f"KafkaNodePool/{pool['metadata']['name']}"]


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
