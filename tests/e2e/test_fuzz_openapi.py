"""Every endpoint of every service fuzzed from its own OpenAPI document (schemathesis), on
real processes: whatever a caller sends, the answer is never a 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from rapport.localstack import EMBEDDED_BROKER_TUNING, free_port
from rapport.supervisor import ServiceProcess, Supervisor
from shared.kafka import ensure_topics
from shared.topics import TopicNames
from tests.helpers import TOKEN_ENV, Infra, auth, random_id

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def services(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    namespace = f"fz{random_id(8)}."
    asyncio.run(ensure_topics(infra.kafka_bootstrap, TopicNames(namespace).partitions()))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "REDIS_URL": infra.redis_url,
        **TOKEN_ENV,
        "RAPPORT_NAMESPACE": namespace,
        "RAPPORT_LOG_LEVEL": "warning",
        **EMBEDDED_BROKER_TUNING,
    }
    logs = Path(tmp_path_factory.mktemp("fuzz-logs"))
    procs = [
        ServiceProcess(name, free_port(), env, logs)
        for name in ("invitation", "connection", "engagement", "projection")
    ]
    supervisor = Supervisor(procs)
    supervisor.start_all()
    try:
        yield {p.name: p.url for p in procs}
    finally:
        supervisor.stop()


def _schema(url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def _no_server_error(case: schemathesis.Case) -> None:
    # The gateway always asserts a member; the body, path and query are the fuzzed parts.
    response = case.call(headers={**(case.headers or {}), **auth("fuzzer")}, timeout=15)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}, response.text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", ["invitation", "connection", "engagement", "projection"])
def test_every_operation_never_answers_5xx(services: dict[str, str], service: str) -> None:
    schema = schemathesis.openapi.from_url(f"{services[service]}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            _no_server_error(case)

        fuzz()
