"""Prometheus metrics, request timing, and the health endpoints every service exposes."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "rapport_http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "rapport_http_request_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_PUBLISHED = Counter(
    "rapport_events_published_total",
    "Events published to Kafka by the outbox relay",
    ["service", "type"],
)
EVENTS_CONSUMED = Counter(
    "rapport_events_consumed_total", "Events applied by a consumer", ["consumer", "type"]
)
EVENTS_DUPLICATE = Counter(
    "rapport_events_duplicate_total", "Re-delivered events skipped by dedupe", ["consumer"]
)
EVENTS_FAILED = Counter(
    "rapport_events_failed_total", "Handler failures (each attempt)", ["consumer", "type"]
)
DLQ_RECORDS = Counter(
    "rapport_dlq_records_total",
    "Records sent to a dead-letter topic",
    ["consumer", "topic", "reason"],
)
READ_QUOTA_REFUSED = Counter(
    "rapport_read_quota_refused_total",
    "Reads refused (429) by the per-member quota on network search and badges",
    ["endpoint"],
)
VIEWER_CACHE = Counter(
    "rapport_viewer_cache_lookups_total", "Viewer-network cache lookups by outcome", ["outcome"]
)
COMMAND_CONFLICTS = Counter(
    "rapport_command_conflicts_total",
    "Commits refused because an aggregate moved meanwhile (each is retried after a backoff)",
    ["service", "command"],
)
OUTBOX_BACKLOG = Gauge(
    "rapport_outbox_backlog", "Outbox entries not yet confirmed by the broker", ["service"]
)
OFFSETS_SKIPPED = Counter(
    "rapport_projection_offsets_skipped_total",
    "Offsets the projection found missing from the log (retention, markers, compaction)",
    ["topic"],
)
LOG_RESETS = Counter(
    "rapport_projection_log_resets_total",
    "Partitions found ending before the stored position: the log was lost and began again",
    ["topic"],
)
LOOP_FAILURES = Counter(
    "rapport_background_loop_failures_total",
    "Unexpected errors of a background loop (each is logged, counted and the loop restarted)",
    ["service", "loop"],
)
READY = Gauge(
    "rapport_ready",
    "1 when the readiness check passed at the last heartbeat (every second), 0 when it failed",
    ["service", "check"],
)
REBUILD_RUNNING = Gauge(
    "rapport_projection_rebuild_running", "1 while this replica runs a projection rebuild"
)
REBUILD_BEHIND = Gauge(
    "rapport_projection_rebuild_behind",
    "Records the running rebuild still has to apply before it can flip (0 when none runs)",
)
CONSUMER_LAG = Gauge(
    "rapport_consumer_lag", "Records behind the partition end", ["consumer", "topic", "partition"]
)

log = logging.getLogger("rapport")


def count_by_type(metric: Counter, consumer: str, types: Iterable[str]) -> None:
    """One labelled increment per event type, not per event: `labels()` costs as much as
    half an event's decode in a consumer's hot loop."""
    for name, n in Tally(types).items():
        metric.labels(consumer, name).inc(n)


class RequestMetrics:
    """Pure ASGI middleware (no per-request task or body copy, unlike `@app.middleware`):
    counts and times every request by method, route template and status."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # The router stores the matched route in the scope: a template, not an id.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
            HTTP_LATENCY.labels(self.service, method, route).observe(time.perf_counter() - started)


def install_request_metrics(app: FastAPI, service: str) -> None:
    app.add_middleware(RequestMetrics, service=service)


ReadinessCheck = Callable[[], Awaitable[None]]


class LoopFailing(RuntimeError):
    """A background loop keeps failing (its name and last error are the message)."""


READY_CHECK_TIMEOUT_S = 1.0


async def run_checks(checks: dict[str, ReadinessCheck]) -> dict[str, str]:
    """Every readiness check, concurrently and each within a deadline (a paused dependency
    fails fast); the failing ones with their error."""

    async def run(check: ReadinessCheck) -> str | None:
        try:
            await asyncio.wait_for(check(), READY_CHECK_TIMEOUT_S)
        except TimeoutError:
            return "Timeout"
        except LoopFailing as exc:
            return str(exc)
        except Exception as exc:  # any failure of a dependency means not ready
            return type(exc).__name__
        return None

    results = await asyncio.gather(*(run(check) for check in checks.values()))
    return {name: err for name, err in zip(checks, results, strict=True) if err}


def health_router(checks: dict[str, ReadinessCheck]) -> APIRouter:
    """`/healthz` (process up), `/readyz` (every dependency answers), `/metrics`."""
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: the broker and Redis are reachable",
        responses={503: {"description": "A dependency is unreachable"}},
    )
    async def readyz() -> JSONResponse:
        failed = await run_checks(checks)
        if failed:
            return JSONResponse(
                {"status": "unavailable", "failed": failed},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        return JSONResponse({"status": "ready", "checks": sorted(checks)})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def describe(exc: BaseException) -> str:
    """An error as logs and DLQ reasons show it: its type and message (redis-py's own repr
    leaves the message out, e.g. `server:ResponseError` for a WRONGTYPE)."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class RepeatFilter(logging.Filter):
    """Logs a warning or error repeated within `window_s` once: an outage retried many times
    a second writes one line per window, and the next line says how many were held back.
    Repeats are told apart by logger, level and message template (not its arguments)."""

    def __init__(self, window_s: float = 10.0, max_keys: int = 1000) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        first, held = self._seen.get(key, (-self.window_s, 0))
        if now - first < self.window_s:
            self._seen[key] = (first, held + 1)
            return False
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.window_s:.0f}s]"
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())


def dump_tasks_on_signal(signum: int = signal.SIGUSR1) -> None:
    """`kill -USR1 <pid>` writes every asyncio task of the process, with the chain of awaits
    it is suspended in, to stderr (the service's log): where a stuck consumer or request
    waits, without a debugger. (A suspended task's own stack shows only its outer frame.)"""

    def dump() -> None:
        for task in asyncio.all_tasks():
            print(f"task {task.get_name()}:", file=sys.stderr)
            awaited: Any = task.get_coro()
            while awaited is not None:
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                if frame is not None:
                    code = frame.f_code
                    print(
                        f"    {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr
                    )
                awaited = getattr(awaited, "cr_await", None) or getattr(
                    awaited, "gi_yieldfrom", None
                )
        sys.stderr.flush()

    asyncio.get_running_loop().add_signal_handler(signum, dump)
