"""A whole Rapport stack (the four service processes) on the session's broker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rapport.localstack import EMBEDDED_BROKER_TUNING, free_port
from rapport.supervisor import SERVICES, ServiceProcess, Supervisor
from shared.kafka import ensure_topics
from shared.topics import TopicNames
from tests.helpers import TOKEN_ENV, Infra, random_id


@dataclass(frozen=True)
class Stack:
    urls: dict[str, str]
    env: dict[str, str]  # what a client (the `rapport` CLI) needs to find this stack
    namespace: str
    logs: Path


def process_env(infra: Infra, prefix: str, **extra: str) -> dict[str, str]:
    """What a service process needs to run on the session's broker and Redis, in a fresh
    namespace starting with `prefix` whose topics exist."""
    namespace = f"{prefix}{random_id(8)}."
    asyncio.run(ensure_topics(infra.kafka_bootstrap, TopicNames(namespace).partitions()))
    return {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "REDIS_URL": infra.redis_url,
        "READ_MODEL_REDIS_URL": infra.read_models_url,
        **TOKEN_ENV,
        "RAPPORT_NAMESPACE": namespace,
        **EMBEDDED_BROKER_TUNING,
        **extra,
    }


@contextmanager
def running_stack(
    infra: Infra,
    logs: Path,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Stack]:
    """The four services in a fresh namespace, each as `workers` processes (replicas);
    `service_env` adds settings of one service only (the projection on a Redis Cluster)."""
    env = process_env(
        infra,
        "e",
        RAPPORT_PROJECTION_DASHBOARD_SAMPLE_S="1",  # charts fill within seconds
        **(extra_env or {}),
    )
    namespace = env["RAPPORT_NAMESPACE"]
    own = service_env or {}
    services = [
        ServiceProcess(name, free_port(), {**env, **own.get(name, {})}, logs, workers)
        for name in SERVICES
    ]
    supervisor = Supervisor(services)
    try:
        supervisor.start_all(timeout_s=90)
        urls = {s.name: s.url for s in services}
        client_env = {**env, **{f"RAPPORT_{n.upper()}_URL": u for n, u in urls.items()}}
        yield Stack(urls, client_env, namespace, logs)
    finally:
        supervisor.stop()


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(infra, Path(tmp_path_factory.mktemp("stack-logs"))) as running:
        yield running
