"""The embedded stack's configuration paths: external infrastructure, and containers mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from rapport.localstack import embedded_infra
from shared.topics import TopicNames
from tests.helpers import Infra

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_with_kafka_and_redis_configured_it_starts_neither(
    infra: Infra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", infra.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", infra.redis_url)
    with embedded_infra(tmp_path, namespace="ext.") as stack:
        assert stack.kafka is None and stack.redis is None
        assert (stack.kafka_bootstrap, stack.redis_url) == (infra.kafka_bootstrap, infra.redis_url)
    assert not (tmp_path / "tansu.log").exists()


def test_containers_mode_without_a_docker_engine_fails_clearly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RAPPORT_TEST_INFRA": "containers",
        "DOCKER_HOST": "unix:///nonexistent.sock",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/integration/test_consumer.py",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "no Docker engine answers" in result.stdout + result.stderr


async def test_topics_are_created_to_keep_the_log_forever(infra: Infra, namespace: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        topics = list(TopicNames(namespace).partitions())
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    for resource in response.resources:
        configs = {entry[0]: entry[1] for entry in resource[4]}
        assert configs["retention.ms"] == "-1", resource[3]
        assert configs["retention.bytes"] == "-1", resource[3]
