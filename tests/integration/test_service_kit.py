"""What every service app gets from `shared.service`: auth, errors, health, metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from rapport.localstack import free_port
from shared.auth import ActingMember
from shared.outbox import OutboxRelay
from shared.service import Runtime, create_service_app
from shared.settings import ConnectionSettings
from tests.helpers import auth, running_app, wait_until

pytestmark = pytest.mark.integration

router = APIRouter()


class Echo(BaseModel):
    text: str


@router.post("/echo")
async def echo(member: ActingMember, body: Echo) -> dict[str, str]:
    return {"member": member, "text": body.text}


def kit_app(**overrides: object):
    return create_service_app(
        ConnectionSettings(**overrides),
        title="kit",
        description="kit",
        routers=[router],
        wire=lambda runtime: None,
    )


@pytest.mark.usefixtures("service_env")
async def test_auth_rejects_missing_and_invalid_tokens() -> None:
    async with running_app(kit_app()) as client:
        body = {"text": "hi"}
        missing = await client.post("/echo", json=body)
        wrong = await client.post("/echo", json=body, headers=auth("ann", token="nope"))
        not_bearer = await client.post("/echo", json=body, headers={"Authorization": "Basic x"})
        no_member = await client.post("/echo", json=body, headers=auth(None))
        bad_member = await client.post("/echo", json=body, headers=auth("a b"))
        ok = await client.post("/echo", json=body, headers=auth("ann", token="other-token"))

    for response in (missing, wrong, not_bearer, no_member):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert bad_member.status_code == 400
    assert ok.status_code == 200
    assert ok.json() == {"member": "ann", "text": "hi"}


@pytest.mark.usefixtures("service_env")
async def test_bad_input_is_a_json_4xx() -> None:
    async with running_app(kit_app()) as client:
        wrong_type = await client.post("/echo", json={"text": 5}, headers=auth("ann"))
        not_json = await client.post(
            "/echo", content=b"{", headers={**auth("ann"), "content-type": "application/json"}
        )
        huge = await client.post("/echo", json={"text": "x" * 70_000}, headers=auth("ann"))
        unknown_route = await client.get("/nowhere")
        wrong_method = await client.delete("/echo", headers=auth("ann"))

    assert [r.status_code for r in (wrong_type, not_json, huge, unknown_route, wrong_method)] == [
        422,
        422,
        413,
        404,
        405,
    ]
    for response in (wrong_type, not_json, huge, unknown_route, wrong_method):
        assert set(response.json()["error"]) == {"code", "message"}
    assert "text" in wrong_type.json()["error"]["message"]


@pytest.mark.usefixtures("service_env")
async def test_health_readiness_and_metrics_need_no_token() -> None:
    async with running_app(kit_app()) as client:
        await client.post("/echo", json={"text": "hi"}, headers=auth("ann"))
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
        docs = await client.get("/openapi.json")

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["checks"] == ["kafka", "loops", "redis"]
    assert (
        'rapport_http_requests_total{method="POST",route="/echo",service="connection",status="200"}'
        in metrics.text
    )
    assert docs.status_code == 200 and "/echo" in docs.json()["paths"]


@pytest.mark.usefixtures("service_env")
async def test_readiness_fails_with_retry_after_when_redis_is_gone() -> None:
    app = kit_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_app(app) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    # Refused at once, or (on a loaded machine, through the client's retries) past the
    # check's deadline: either way Redis is the one dependency named.
    assert ready.json()["failed"].keys() == {"redis"}
    assert ready.json()["failed"]["redis"] in {"ConnectionError", "Timeout"}
    assert ready.headers["retry-after"] == "2"


@pytest.mark.usefixtures("service_env")
async def test_a_background_loop_that_dies_is_restarted_and_readyz_reports_one_that_keeps_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = {"job": 0}
    dying = asyncio.Event()

    async def flaky_job() -> None:
        runs["job"] += 1
        raise RuntimeError("job broke")

    def wire(runtime: Runtime) -> None:
        runtime.every(0.01, flaky_job, "flaky-job")

    app = create_service_app(
        ConnectionSettings(), title="kit", description="kit", routers=[router], wire=wire
    )
    # The relay dies once on an unexpected error; the supervisor restarts it.
    original = OutboxRelay.relay_once
    calls = {"n": 0}

    async def relay_once_dying_first(self: OutboxRelay) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            dying.set()
            raise RuntimeError("relay broke")
        return await original(self)

    monkeypatch.setattr(OutboxRelay, "relay_once", relay_once_dying_first)
    async with running_app(app) as client:
        await wait_until(lambda: _ready_says(client, "flaky-job: RuntimeError('job broke')"))
        await asyncio.wait_for(dying.wait(), timeout=5)
        await wait_until(lambda: _relay_ran_again(calls))
        metrics = (await client.get("/metrics")).text
    assert 'rapport_background_loop_failures_total{loop="flaky-job",service="connection"}' in (
        metrics
    )
    assert 'loop="connection-outbox-relay"' in metrics


async def _ready_says(client: httpx.AsyncClient, text: str) -> bool:
    ready = await client.get("/readyz")
    return ready.status_code == 503 and text in ready.json()["failed"].get("loops", "")


async def _relay_ran_again(calls: dict[str, int]) -> bool:
    return calls["n"] >= 2
