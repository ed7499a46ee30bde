"""What every service's `main.py` wires the same way: Redis, the broker, the outbox relay,
background loops, error handlers, auth, metrics and health endpoints.

Nothing connects at import time: clients are built and started inside the app's lifespan,
after the service has declared its subscribers and publishers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.archive import LogArchive
from shared.consumer import (
    EventConsumer,
    Subscription,
    broker_dead_letter_sink,
    subscribe,
    transient,
)
from shared.errors import ERROR_RESPONSES, error_response, install_error_handlers
from shared.groups import KeyLayout, group_of_key
from shared.instances import HEARTBEAT_S, InstanceReporter
from shared.kafka import make_broker
from shared.observability import (
    LOOP_FAILURES,
    LoopFailing,
    configure_logging,
    describe,
    dump_tasks_on_signal,
    health_router,
    install_request_metrics,
)
from shared.outbox import OutboxRelay, RedisStateStore
from shared.redis import BACKGROUND_SOCKET_TIMEOUT_S, connect, initialize
from shared.settings import ServiceSettings

log = logging.getLogger("rapport.service")

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
# Each step of a shutdown gets this long: a stuck client never keeps a process from exiting.
STOP_TIMEOUT_S = 15.0
# Background loops get this long to finish the run they are in before they are cancelled.
STOP_GRACE_S = 5.0


def settle_garbage_collector(young_threshold: int) -> None:
    """Once a process has started: what it holds for good (modules, routes, models, clients,
    ~100k objects) leaves the collector's reach (gc.freeze), and the youngest generation is
    collected every `young_threshold` allocations. A request frees almost all it allocates
    by reference counting; the collector only walked the long-lived heap again and again.
    Measured in the invitation service under invite load, 8 s: 15 full collections of up to
    33 ms each (the p99's spikes) and ~0.8 s of collector time; frozen, full collections of
    under 4 ms; with the young threshold at 10,000 as well, 5 ms of collector time in all.
    Once per process: one that starts several apps (the tests) freezes what it held first."""
    if gc.get_freeze_count():
        return
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], within_s: float = 10.0) -> None:
    """Cancel background tasks and wait until they end. A cancellation can be lost in a race
    (Python 3.11's `wait_for` may swallow one when its inner call completes at the same
    moment), so a task still running is cancelled again; past `within_s` it is reported and
    left behind rather than hanging the shutdown."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in pending:
        log.error("background task %s did not stop within %.0fs", task.get_name(), within_s)


@dataclass
class LoopHealth:
    """How a background loop is doing: consecutive unexpected failures, the last error."""

    failures: int = 0
    last_error: str = ""
    last_failure_at: float = 0.0
    # Failing: this many failures in a row, the last one within the window.
    FAILING_AFTER: ClassVar[int] = 3
    WINDOW_S: ClassVar[float] = 120.0

    @property
    def failing(self) -> bool:
        recent = time.monotonic() - self.last_failure_at < self.WINDOW_S
        return self.failures >= self.FAILING_AFTER and recent

    def failed(self, exc: BaseException, service: str, name: str) -> float:
        """Count a failure; the backoff before trying again (grows, capped at 30 s)."""
        if time.monotonic() - self.last_failure_at > self.WINDOW_S:
            self.failures = 0  # the last run went well for a while: a new streak
        self.failures += 1
        self.last_error = repr(exc)[:200]
        self.last_failure_at = time.monotonic()
        LOOP_FAILURES.labels(service, name).inc()
        return float(min(0.5 * 2 ** (self.failures - 1), 30.0))

    def succeeded(self) -> None:
        self.failures = 0


async def supervise(
    loop: Callable[[], Coroutine[Any, Any, None]], health: LoopHealth, service: str, name: str
) -> None:
    """Run `loop` until it ends on purpose (a stop); an unexpected error is logged, counted
    and the loop restarted after a backoff."""
    while True:
        try:
            await loop()
            return
        except Exception as exc:
            delay = health.failed(exc, service, name)
            log.exception("%s stopped on %r; restarting in %.1fs", name, exc, delay)
            await asyncio.sleep(delay)  # backoff before the restart


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class RelayThread:
    """A process's outbox relays on an event loop of their own, in a thread, each with the
    Redis client and Kafka producer of that loop (a client belongs to the loop that made it).

    On the service's loop each of a relay's awaits (XRANGE, the publish, the broker's
    confirm, XDEL) waited behind every request handler ready before it: under write load a
    batch took several turns of tens of milliseconds each, and the relay hop's p99 was about
    200 ms on 2 cores. Here a wake-up waits for the interpreter lock at most (handed over
    every 5 ms). `streams`: the outbox streams, one relay each."""

    def __init__(
        self, settings: ServiceSettings, streams: list[str], loops: dict[str, LoopHealth]
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.loops = loops  # the runtime's: /readyz reports a relay that keeps failing
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def start(self, deadline: float) -> None:
        """Start the thread; returns once its clients are up (raises if they never came)."""
        self._thread = threading.Thread(
            target=self._main,
            args=(deadline,),
            name=f"{self.settings.service}-outbox-relay",
            daemon=True,  # never keeps a process alive; stop() drains and joins it
        )
        self._thread.start()
        await asyncio.wrap_future(self._started)

    async def stop(self) -> None:
        """Stop the relays, publish what the outbox holds (if this process holds the lease),
        close the clients and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join, 2 * STOP_TIMEOUT_S)
        if thread.is_alive():
            log.error("%s did not stop within %.0fs", thread.name, 2 * STOP_TIMEOUT_S)

    def _main(self, deadline: float) -> None:
        loop = _new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._run(deadline))
        except BaseException as exc:  # never lost: start() or the log tells it
            if not self._started.done():
                self._started.set_exception(exc)
            else:
                log.exception("%s ended on %r", threading.current_thread().name, exc)
        finally:
            loop.close()

    async def _run(self, deadline: float) -> None:
        s = self.settings
        self._stopping = asyncio.Event()
        redis = connect(s.redis_url, cluster=s.redis_cluster)
        broker = make_broker(s.kafka_bootstrap_servers, f"rapport-{s.service}-relay")
        archive = LogArchive(redis, s.key()) if s.log_archive else None
        relays = [
            OutboxRelay(redis, broker, stream, s.service, archive=archive)
            for stream in self.streams
        ]
        try:
            await _retried_until(deadline, "redis", functools.partial(initialize, redis))
            await _retried_until(deadline, "broker", broker.start)
            self._started.set_result(None)
            tasks = []
            for relay in relays:
                name = _relay_name(s.service, relay)
                health = self.loops.setdefault(name, LoopHealth())
                tasks.append(
                    asyncio.create_task(supervise(relay.run, health, s.service, name), name=name)
                )
            await self._stopping.wait()
            for relay in relays:
                relay.stop()
            await cancel_and_wait(tasks)
            # What requests committed just before shutdown goes out now, not at the next start.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(relay.drain() for relay in relays)), timeout=5.0
                )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.stop(), timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await redis.aclose()


def _relay_name(service: str, relay: OutboxRelay) -> str:
    group = group_of_key(relay.stream_key)
    return f"{service}-outbox-relay-{group}" if group else f"{service}-outbox-relay"


@dataclass
class Runtime:
    """The live clients of one service process: what `main.py` wires its parts from."""

    settings: ServiceSettings
    redis: Redis
    broker: KafkaBroker
    state: RedisStateStore
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Background loops by name: their consecutive unexpected failures and the last error.
    loops: dict[str, LoopHealth] = field(default_factory=dict)
    reporter: InstanceReporter | None = None
    # Set at shutdown: periodic loops (`every`, also in `tasks`) end between two runs.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    periodic: list[asyncio.Task[Any]] = field(default_factory=list)
    background_clients: list[Redis] = field(default_factory=list)
    # Request clients of other Redis servers than `redis` (the projection's read models'):
    # started, checked by /readyz and closed with it.
    other_clients: list[Redis] = field(default_factory=list)
    # Relays each of `state.streams` (one per slot group) under its own lease, once started.
    relay_thread: RelayThread | None = None

    @classmethod
    def build(cls, settings: ServiceSettings, layout: KeyLayout = KeyLayout.ONE_NODE) -> Runtime:
        if settings.redis_cluster and layout is KeyLayout.ONE_NODE:
            raise ValueError(
                f"the {settings.service} service's keys are not laid out for Redis Cluster "
                "yet (docs/scaling.md): run it on one Redis node"
            )
        redis = connect(settings.redis_url, cluster=settings.redis_cluster)
        broker = make_broker(settings.kafka_bootstrap_servers, f"rapport-{settings.service}")
        state = RedisStateStore.of(redis, settings, layout)
        return cls(settings, redis, broker, state)

    def redis_at(self, url: str) -> Redis:
        """The request client of the Redis at `url`: `redis` itself if it is that one."""
        if url == self.settings.redis_url:
            return self.redis
        client = connect(url, cluster=self.settings.redis_cluster)
        self.other_clients.append(client)
        return client

    def background_redis(self, url: str | None = None) -> Redis:
        """A client for background work whose single calls may take long (batches, rebuilds):
        the request client's short timeout would call those an outage. `url`: another Redis
        than REDIS_URL's."""
        s = self.settings
        client = connect(
            url or s.redis_url,
            cluster=s.redis_cluster,
            socket_timeout_s=BACKGROUND_SOCKET_TIMEOUT_S,
        )
        self.closers.append(client.aclose)
        self.background_clients.append(client)
        return client

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
                wanted=frozenset(t.__name__ for t in sub.handlers),
            )
            subscribe(
                self.broker,
                consumer,
                [s.topics(t) for t in sub.topics],
                group_id=f"{s.namespace}rapport-{s.service}-{sub.name}",
                pacing=s.fetch_pacing(background=sub.background),
                **s.consumer_options(background=sub.background),
            )

    def spawn(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run `loop` in the background, supervised: an unexpected error is logged, counted
        and the loop restarted after a backoff; `/readyz` reports a loop that keeps failing."""
        health = self.loops.setdefault(name, LoopHealth())
        supervised = functools.partial(supervise, loop, health, self.settings.service, name)
        self.tasks.append(asyncio.create_task(supervised(), name=name))

    def every(self, interval_s: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run `job` every `interval_s` in the background; an outage only delays it, and an
        unexpected error is logged and counted without ending the loop."""
        health = self.loops.setdefault(name, LoopHealth())

        async def loop() -> None:
            while not self.stopping.is_set():
                try:
                    await job()
                    health.succeeded()
                except Exception as exc:
                    if transient(exc):
                        log.warning("%s: %r", name, exc)
                    else:
                        health.failed(exc, self.settings.service, name)
                        log.exception("%s failed; running again in %.1fs", name, interval_s)
                # Until the next run, or a stop: a stop ends the loop between two runs, so a
                # job is not cancelled halfway through a Redis call.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval_s):
                        await self.stopping.wait()

        self.spawn(loop, name)
        self.periodic.append(self.tasks[-1])

    async def check_loops(self) -> None:
        """Readiness: no background loop failing again and again."""
        failing = [f"{n}: {h.last_error}" for n, h in self.loops.items() if h.failing]
        if failing:
            raise LoopFailing("; ".join(failing))

    async def start(self, timeout_s: float = 30.0) -> None:
        dump_tasks_on_signal()
        deadline = time.monotonic() + timeout_s
        for client in (self.redis, *self.other_clients, *self.background_clients):
            await _retried_until(deadline, "redis", functools.partial(initialize, client))
        await _retried_until(deadline, "broker", self.broker.start)
        self.relay_thread = RelayThread(self.settings, self.state.streams, self.loops)
        await self.relay_thread.start(deadline)
        s = self.settings
        self.reporter = InstanceReporter(
            self.redis,
            s.key("instances"),
            s.service,
            int(getattr(s, "port", 0)),
            self.readiness_checks(),
            self.loop_states,
            self.state.backlog,
        )
        self.every(HEARTBEAT_S, self.reporter.beat, f"{s.service}-heartbeat")

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"redis": self.check_redis, "kafka": self.check_broker, "loops": self.check_loops}

    def loop_states(self) -> dict[str, Any]:
        return {
            name: {"failures": h.failures, "failing": h.failing, "last_error": h.last_error}
            for name, h in self.loops.items()
        }

    async def stop(self) -> None:
        self.stopping.set()
        # Periodic jobs finish the run they are in; whatever is still going is cancelled.
        running = [task for task in self.periodic if not task.done()]
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        await cancel_and_wait(self.tasks)
        if self.relay_thread is not None:  # it publishes what the outbox holds, then ends
            await self.relay_thread.stop()
        # Stopping the broker drains in-flight handlers before leaving the group; only then
        # go the clients they may still use (the background Redis client among them).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), timeout=STOP_TIMEOUT_S)
        if self.reporter is not None:  # the health panel shows the stop at once
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.stopped(), timeout=1.0)
        for close in self.closers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), timeout=STOP_TIMEOUT_S)
        for client in (*self.other_clients, self.redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def check_redis(self) -> None:
        for client in (self.redis, *self.other_clients):
            await client.ping()

    async def check_broker(self) -> None:
        if not await self.broker.ping(timeout=2.0):
            raise ConnectionError("broker did not answer")


async def _retried_until(deadline: float, name: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` until it succeeds: what it reaches may still be booting; give up at the
    deadline."""
    while True:
        try:
            await step()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s not ready (%s); retrying", name, describe(exc))
            await asyncio.sleep(0.5)  # backoff before the next try


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    wire: Callable[[Runtime], object],
    on_started: Callable[[Runtime], Awaitable[None]] | None = None,
    layout: KeyLayout = KeyLayout.ONE_NODE,
) -> FastAPI:
    """Build a service app. `wire` builds the service's parts from the runtime (declaring
    consumers and background loops before start); its result is what the service's
    `deps.py` hands to routes, as `app.state.wired`. `layout`: how its keys are laid out."""
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings, layout)
        app.state.wired = wire(runtime)
        await runtime.start()
        app.state.runtime = runtime
        if on_started is not None:
            await on_started(runtime)
        await build_routes(app)
        settle_garbage_collector(settings.gc_young_threshold)
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
        # Metrics are Prometheus' (shared.observability); FastAPI's native OpenTelemetry
        # would look its providers up in the environment on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    install_request_metrics(app, settings.service)  # added last = outermost: counts 413s too

    def check(name: str) -> Callable[[], Awaitable[None]]:
        # The runtime exists once the lifespan started; /readyz is answered only then.
        return lambda: app.state.runtime.readiness_checks()[name]()

    app.include_router(health_router({name: check(name) for name in ("redis", "kafka", "loops")}))
    for router in routers:
        app.include_router(router)
    return app


# A path no route takes: matching it visits every route.
UNROUTED_PATH = "/.no-such-route"


async def build_routes(app: FastAPI) -> None:
    """FastAPI (0.137 on) builds an included router's routes, their fields and dependencies,
    on the first request that is matched against them: about 60 ms on the bench machine,
    which the first caller of each process waited out. One request that no route takes,
    through the router alone (no middleware: no metrics, no log), builds them all before the
    service starts answering."""
    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": UNROUTED_PATH,
        "raw_path": UNROUTED_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass  # the 404 goes nowhere

    await app.router(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware bounding request bodies: 413 for a declared length over
    MAX_BODY_BYTES before reading, and while streaming for any body (chunked included);
    400 for JSON nested deeper than MAX_JSON_DEPTH."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _too_large()(scope, receive, send)
            return
        body = _BoundedBody()

        async def bounded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                # Raised inside the app's body read; FastAPI re-raises an HTTPException as
                # is, and the error handlers answer it in the JSON error model.
                body.take(message.get("body", b""))
            return message

        await self.app(scope, bounded_receive, send)


def _too_large() -> JSONResponse:
    return error_response(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")


class _BoundedBody:
    """Counts a body's bytes as they arrive and tracks its JSON nesting (outside strings)."""

    def __init__(self) -> None:
        self.size = 0
        self.openers = 0  # brackets seen: the depth cannot exceed it (cheap to count)
        self.chunks: list[bytes] = []
        self.scanner: _DepthScanner | None = None

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_BODY_BYTES:
            raise HTTPException(413, f"body exceeds {MAX_BODY_BYTES} bytes")
        if self.scanner is None:
            self.chunks.append(chunk)
            self.openers += chunk.count(b"[") + chunk.count(b"{")
            if self.openers <= MAX_JSON_DEPTH:
                return
            # Deep enough to matter: scan what came so far, then every further chunk.
            self.scanner = _DepthScanner()
            chunk, self.chunks = b"".join(self.chunks), []
        if self.scanner.feed(chunk) > MAX_JSON_DEPTH:
            raise HTTPException(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


class _DepthScanner:
    def __init__(self) -> None:
        self.depth = 0
        self.deepest = 0
        self.in_string = False
        self.escaped = False

    def feed(self, chunk: bytes) -> int:
        for byte in chunk:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in (0x5B, 0x7B):  # [ {
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
            elif byte in (0x5D, 0x7D):  # ] }
                self.depth -= 1
        return self.deepest
