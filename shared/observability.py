"""Prometheus metrics, request timing, and the health endpoints every service exposes."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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
OUTBOX_BACKLOG = Gauge(
    "rapport_outbox_backlog", "Outbox entries not yet confirmed by the broker", ["service"]
)
CONSUMER_LAG = Gauge(
    "rapport_consumer_lag", "Records behind the partition end", ["consumer", "topic", "partition"]
)

log = logging.getLogger("rapport")


def _route_template(request: Request) -> str:
    """The route's path template, so metrics do not get one label per member id."""
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def install_request_metrics(app: FastAPI, service: str) -> None:
    @app.middleware("http")
    async def _measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request)
            HTTP_REQUESTS.labels(service, request.method, route, str(status)).inc()
            HTTP_LATENCY.labels(service, request.method, route).observe(
                time.perf_counter() - started
            )


ReadinessCheck = Callable[[], Awaitable[None]]


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
        failed: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
            except Exception as exc:  # any failure of a dependency means not ready
                failed[name] = type(exc).__name__
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
