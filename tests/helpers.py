"""Helpers shared by the test tiers: ids, waiting on conditions, reading topics, app clients."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from fastapi import FastAPI

from rapport.replay import digest, read_log, replay
from shared.redis import connect, initialize

T = TypeVar("T")

TOKEN = "test-token"
OPS_TOKEN = "ops-token"
ADMIN_TOKEN = "admin-token"
# The token settings every test stack runs with (a role each: shared.auth).
TOKEN_ENV = {
    "RAPPORT_API_TOKENS": f"{TOKEN},other-token",
    "RAPPORT_OPS_TOKENS": OPS_TOKEN,
    "RAPPORT_ADMIN_TOKENS": ADMIN_TOKEN,
}


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    redis_url: str
    read_model_redis_url: str = ""  # the projection's read models' own Redis, if any

    @property
    def read_models_url(self) -> str:
        return self.read_model_redis_url or self.redis_url


def random_id(n: int = 10) -> str:
    return secrets.token_hex(n // 2 + 1)[:n]


def auth(member: str | None = None, token: str = TOKEN) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if member is not None:
        headers["X-Member-Id"] = member
    return headers


async def wait_until(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def poll_until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Blocking twin of `wait_until`, for tests that drive other processes (CLI, browser)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.1)  # polling another process's state; `check` is the condition
    return result


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (a service's uvicorn master: its workers, and
    multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on `topic` from the start, once at least `expect` arrived.

    Then it keeps reading briefly until no more arrive in one poll, so extra (duplicate)
    records are seen too.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            if not batch:
                break
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    if len(records) < expect:
        raise AssertionError(f"{topic}: expected {expect} records, got {len(records)}")
    return records


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (real broker + Redis), called in process over ASGI."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def publish_envelopes(bootstrap: str, namespace: str, envelopes: list[Any]) -> None:
    """Publish envelopes to their (namespaced) topics, keyed and typed like the outbox does."""
    from shared.kafka import publish_envelopes as publish
    from shared.topics import TopicNames

    await publish(bootstrap, envelopes, TopicNames(namespace))


async def rebuild_digest(client: httpx.AsyncClient, store: Any) -> str:
    """Rebuild the projection behind `client` from the log (admin token) and return the new
    version's digest: what a clean replay makes of the topics."""
    from services.projection import queries

    started = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
    assert started.status_code == 202, started.text

    async def done() -> bool:
        status = (await client.get("/projection/status", headers=auth())).json()
        return bool(status["rebuild"]["state"] == "done")

    await wait_until(done, timeout=30)
    return str(await queries.status.digest(store, await store.version()))


async def publish_raw(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Publish records as they are (key, value, headers): poison, or what an old producer sent."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2**20 + 2**16)
    await producer.start()
    try:
        for key, value, headers in records:
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()


async def live_and_replayed(
    service: str, infra: Infra, namespace: str, redis_url: str | None = None
) -> tuple[str, str]:
    """A write service's state digest, and that of the log replayed into a fresh keyspace
    (`rapport replay`): the clean rebuild of a write service. On the test's Redis, or on the
    Redis Cluster at `redis_url`."""
    redis = connect(redis_url or infra.redis_url, cluster=redis_url is not None)
    await initialize(redis)
    try:
        live = await digest(service, redis, namespace)
        fresh = f"{namespace}replay."
        await replay(service, redis, await read_log(infra.kafka_bootstrap, namespace), fresh)
        return live, await digest(service, redis, fresh)
    finally:
        await redis.aclose()
