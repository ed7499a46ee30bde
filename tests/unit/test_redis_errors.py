"""Redis saying "not now" is an outage (503 + Retry-After, retried by consumers); any other
error reply is a bug (500)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ResponseError

from shared.consumer import transient
from shared.errors import install_error_handlers

NOT_NOW = [
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "LOADING Redis is loading the dataset in memory",
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    # How a pipeline wraps the reply of one of its commands.
    "Command # 1 (INCRBY k 1) of pipeline caused error: ('BUSY Redis is busy running a script.',)",
]
BUGS = ["WRONGTYPE Operation against a key holding the wrong kind of value", "ERR syntax error"]


def _app(message: str) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    async def fails() -> None:
        raise ResponseError(message)

    return app


async def _call(message: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(message), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/")


@pytest.mark.parametrize("message", NOT_NOW)
async def test_not_now_replies_are_503_with_retry_after_and_retried(message: str) -> None:
    response = await _call(message)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["code"] == "unavailable"
    assert transient(ResponseError(message))


@pytest.mark.parametrize("message", BUGS)
async def test_other_error_replies_are_bugs(message: str) -> None:
    response = await _call(message)
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal"
    assert not transient(ResponseError(message))
