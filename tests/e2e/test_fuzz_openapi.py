"""Every endpoint of every service fuzzed from its own OpenAPI document (schemathesis), on
real processes, acting as the member each path names: whatever a caller sends, the answer is
never a 5xx and always matches the schema the document gives for it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from rapport.client import BlockingClient, link
from rapport.localstack import free_port
from rapport.supervisor import ServiceProcess, Supervisor
from shared.events import ID_PATTERN
from tests.e2e.conftest import process_env
from tests.helpers import TOKEN, Infra, auth

pytestmark = pytest.mark.e2e

ID = re.compile(ID_PATTERN)


@pytest.fixture(scope="module")
def services(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # A fuzzed `?after=` names an event that never comes: each such read waits out the cap
    # (10 s by default; most of this test's time), and answers the same 409 after 100 ms.
    env = process_env(
        infra, "fz", RAPPORT_LOG_LEVEL="warning", RAPPORT_PROJECTION_AFTER_WAIT_MAX_MS="100"
    )
    logs = Path(tmp_path_factory.mktemp("fuzz-logs"))
    procs = [
        ServiceProcess(name, free_port(), env, logs)
        for name in ("invitation", "connection", "engagement", "projection")
    ]
    supervisor = Supervisor(procs)
    supervisor.start_all()
    try:
        urls = {p.name: p.url for p in procs}
        # Members the OpenAPI examples name, connected, so examples reach real data.
        with BlockingClient(urls, TOKEN, timeout=15) as api:
            for member in ("ada", "grace"):
                api.register(member, member.title(), "Technology")
        yield urls
    finally:
        supervisor.stop()


def _schema(url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(link(url, "/openapi.json"))


FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def acting_member(case: schemathesis.Case) -> str:
    """The member named in the path, so their own views are fuzzed too (not stopped at 403);
    a registered member for routes that name none."""
    member = (case.path_parameters or {}).get("member_id")
    return member if isinstance(member, str) and ID.fullmatch(member) else "ada"


def _no_server_error(case: schemathesis.Case) -> None:
    # The gateway always asserts a member; the body, path and query are the fuzzed parts.
    headers = {**(case.headers or {}), **auth(acting_member(case))}
    response = case.call(headers=headers, timeout=15)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
    # Every answer matches the schema its own OpenAPI document gives for its status.
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}, response.text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", ["invitation", "connection", "engagement", "projection"])
def test_every_operation_never_answers_5xx(services: dict[str, str], service: str) -> None:
    # The fuzzer sends what the schema allows, malformed on purpose: its own requests, not
    # the typed client's.
    schema = _schema(services[service])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            _no_server_error(case)

        fuzz()
