"""What every service's `main.py` wires the same way: Redis, the broker, the outbox relay,
background loops, error handlers, auth, metrics and health endpoints.

Nothing connects at import time: clients are built and started inside the app's lifespan,
after the service has declared its subscribers and publishers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.consumer import (
    TRANSIENT_ERRORS,
    EventConsumer,
    Subscription,
    broker_dead_letter_sink,
    subscribe,
)
from shared.errors import ERROR_RESPONSES, error_response, install_error_handlers
from shared.kafka import make_broker
from shared.observability import configure_logging, health_router, install_request_metrics
from shared.outbox import OutboxRelay, RedisStateStore
from shared.redis import connect
from shared.settings import ServiceSettings

log = logging.getLogger("rapport.service")

MAX_BODY_BYTES = 64 * 1024


@dataclass
class Runtime:
    """The live clients of one service process: what `main.py` wires its parts from."""

    settings: ServiceSettings
    redis: Redis
    broker: KafkaBroker
    state: RedisStateStore
    relay: OutboxRelay
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: ServiceSettings) -> Runtime:
        redis = connect(settings.redis_url, cluster=getattr(settings, "redis_cluster", False))
        broker = make_broker(settings.kafka_bootstrap_servers, f"rapport-{settings.service}")
        stream = settings.key(settings.service, "outbox")
        state = RedisStateStore(redis, stream, settings.topics, settings.dedupe_ttl_s)
        relay = OutboxRelay(redis, broker, stream, settings.service)
        return cls(settings, redis, broker, state, relay)

    def subscribe(self, *subscriptions: Subscription) -> None:
        """Declare each subscription as an idempotent batch consumer group of this service."""
        s = self.settings
        for sub in subscriptions:
            consumer = EventConsumer(
                name=f"{s.service}.{sub.name}",
                redis=self.redis,
                handler=sub.dispatch,
                dead_letter=broker_dead_letter_sink(self.broker),
                dedupe_prefix=s.key(s.service, "seen", sub.name),
                max_attempts=s.consumer_max_attempts,
                backoff_s=s.consumer_backoff_s,
            )
            subscribe(
                self.broker,
                consumer,
                [s.topics(t) for t in sub.topics],
                group_id=f"{s.namespace}rapport-{s.service}-{sub.name}",
                **s.consumer_options(),
            )

    def spawn(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self.tasks.append(asyncio.create_task(loop(), name=name))

    def every(
        self, interval_s: float, job: Callable[[], Awaitable[Any]], name: str
    ) -> None:
        """Run `job` every `interval_s` in the background; an outage only delays it, and an
        unexpected error is logged without ending the loop."""

        async def loop() -> None:
            while True:
                try:
                    await job()
                except TRANSIENT_ERRORS as exc:
                    log.warning("%s: %r", name, exc)
                except Exception:
                    log.exception("%s failed; running again in %.1fs", name, interval_s)
                # Periodic by nature: there is no event to wait on for "time passed".
                await asyncio.sleep(interval_s)

        self.spawn(loop, name)

    async def start(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.broker.start()
                break
            except Exception as exc:  # the broker may still be booting; give up at the deadline
                if time.monotonic() > deadline:
                    raise
                log.warning("broker not ready (%r); retrying", exc)
                await asyncio.sleep(0.5)
        self.spawn(self.relay.run, f"{self.settings.service}-outbox-relay")

    async def stop(self) -> None:
        self.relay.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # What requests committed just before shutdown goes out now, not at the next start.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.relay.drain(), timeout=5.0)
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()
        # Stopping the broker drains in-flight handlers before leaving the group.
        await self.broker.stop()
        await self.redis.aclose()

    async def check_redis(self) -> None:
        await self.redis.ping()

    async def check_broker(self) -> None:
        if not await self.broker.ping(timeout=2.0):
            raise ConnectionError("broker did not answer")


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    wire: Callable[[Runtime], object],
    on_started: Callable[[Runtime], Awaitable[None]] | None = None,
) -> FastAPI:
    """Build a service app. `wire` builds the service's parts from the runtime (declaring
    consumers and background loops before start); its result is what the service's
    `deps.py` hands to routes, as `app.state.wired`."""
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        app.state.wired = wire(runtime)
        await runtime.start()
        app.state.runtime = runtime
        if on_started is not None:
            await on_started(runtime)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=title,
        description=description,
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    install_request_metrics(app, settings.service)  # added last = outermost: counts 413s too

    async def check_redis() -> None:
        await app.state.runtime.check_redis()

    async def check_broker() -> None:
        await app.state.runtime.check_broker()

    app.include_router(health_router({"redis": check_redis, "kafka": check_broker}))
    for router in routers:
        app.include_router(router)
    return app


class BodyLimit:
    """Pure ASGI middleware: 413 for a declared body over MAX_BODY_BYTES, before reading it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                response = error_response(
                    413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
