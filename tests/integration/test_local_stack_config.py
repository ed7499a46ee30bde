"""The embedded stack's configuration paths: external infrastructure, containers mode, and
the topics' partition counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis

from rapport.archive import log_layout
from rapport.localstack import embedded_infra
from shared.archive import ArchivedRecord, LogArchive
from shared.topics import INVITATIONS, TopicNames, dlq
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


async def test_an_archived_log_keeps_the_partition_counts_it_was_written_with(
    infra: Infra, namespace: str
) -> None:
    """A key's partition is its hash modulo the count: restored with another count, a
    member's later events would land in another partition than their earlier ones."""
    topics = TopicNames(namespace)
    new = await log_layout(infra.redis_url, namespace, per_topic=2)
    assert new == topics.partitions(2)
    assert new[topics(INVITATIONS)] == 2 and new[dlq(topics(INVITATIONS))] == 1
    # Started again with more replicas: the log keeps its counts.
    assert await log_layout(infra.redis_url, namespace, per_topic=4) == new


async def test_a_log_archived_before_counts_were_recorded_restores_with_the_old_ones(
    infra: Infra, namespace: str, redis_client: Redis
) -> None:
    archive = LogArchive(redis_client, f"{namespace}rapport")
    await archive.keep([ArchivedRecord(f"{namespace}{INVITATIONS}", 11, 0, b"a|b", b"{}")])
    old = await log_layout(infra.redis_url, namespace, per_topic=1)
    assert old == TopicNames(namespace).partitions() and old[f"{namespace}{INVITATIONS}"] == 12
